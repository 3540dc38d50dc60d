"""A small real filesystem for disk-full faults: an ext4 image the test makes, loop-mounted, filled and freed.

Filling takes a filler file of fallocated blocks (no bytes written, so it is instant and the image on the
machine's own disk stays sparse); freeing is removing it. Needs root (mount); a machine that cannot mount a
loop device fails the test loudly, it does not skip it."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.faults.private_services import PrivatePostgres, _pg_bin

MiB = 2**20


def _run(*command: str) -> None:
    done = subprocess.run(list(command), capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"`{' '.join(command)}` failed ({done.returncode}): {done.stderr.strip()}")


@dataclass
class LoopFS:
    mountpoint: Path

    @property
    def filler(self) -> Path:
        return self.mountpoint / "filler"

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.mountpoint).free

    def fill(self, leave: int = 0) -> None:
        """Take all but `leave` bytes of the free space (and keep taking what frees up later: call again)."""
        size = (self.filler.stat().st_size if self.filler.exists() else 0) + self.free_bytes() - leave
        with open(self.filler, "ab") as handle:
            try:
                os.posix_fallocate(handle.fileno(), 0, max(size, 1))
            except OSError:  # the extent tree's own blocks come out of the free space as well
                os.posix_fallocate(handle.fileno(), 0, max(size - MiB, 1))
        # What is left after the extents: write until ENOSPC when nothing at all should be left.
        if leave == 0:
            with contextlib.suppress(OSError), open(self.filler, "ab", buffering=0) as handle:
                while True:
                    handle.write(b"\0" * 4096)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)


@contextlib.contextmanager
def reachable_dir() -> Iterator[Path]:
    """A scratch directory other users may enter (PostgreSQL runs as `postgres`), deleted afterwards."""
    path = Path(tempfile.mkdtemp(prefix="fault-volume-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def loop_filesystem(image_dir: Path, size_mib: int = 64, owner: str | None = None) -> Iterator[LoopFS]:
    """An ext4 of `size_mib` MiB (no root reserve, so every writer sees the same free space) mounted under
    `image_dir`; unmounted and deleted afterwards whatever happens. `owner` (a user name) gets the root directory."""
    image, mountpoint = image_dir / "volume.img", image_dir / "volume"
    mountpoint.mkdir(parents=True, exist_ok=True)
    _run("truncate", "-s", f"{size_mib}M", str(image))
    _run("mkfs.ext4", "-q", "-m", "0", "-E", "root_owner=0:0", str(image))
    _run("mount", "-o", "loop", str(image), str(mountpoint))
    try:
        if owner:
            shutil.chown(mountpoint, owner, owner)
        yield LoopFS(mountpoint)
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)
        image.unlink(missing_ok=True)


class VolumePostgres(PrivatePostgres):
    """A private PostgreSQL whose data directory is on `volume` (a LoopFS owned by postgres) and whose WAL is
    not: the volume that fills is the tables' and indexes', where a full disk fails the statement (ERROR, SQLSTATE
    53100) and the server stays up. (A full WAL disk makes PostgreSQL PANIC and restart: the restart fault.)"""

    def __init__(self, volume: LoopFS, root: Path) -> None:
        super().__init__(root)
        self.data = volume.mountpoint / "data"

    def start(self, timeout: float = 60) -> VolumePostgres:
        if not self.initialised:
            initdb = [_pg_bin("initdb"), "-D", str(self.data), "-X", str(self.dir / "wal"), "-U", self.user]
            self._run(*initdb, "--auth=trust", "-E", "UTF8", "--no-sync")
            self.socket_dir.mkdir()
            shutil.chown(self.socket_dir, "postgres", "postgres")
            self.initialised = True
        super().start(timeout)
        return self

    def load(self, source_url: str, name: str) -> str:
        """A copy of another database (schema and rows, no owners or grants); returns its DATABASE_URL."""
        url = self.createdb(name)
        dump = subprocess.run(
            [_pg_bin("pg_dump"), "-Fc", "-O", "-x", "-d", source_url], capture_output=True, check=True
        ).stdout
        subprocess.run([_pg_bin("pg_restore"), "-O", "-x", "-d", url], input=dump, capture_output=True, check=True)
        return url
