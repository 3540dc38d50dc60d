"""Agent side of datasets: the version a job trains on comes from the console's internal route into
DATASET_CACHE_DIR on this host, verified by sha256 as it streams, resumed after a broken transfer, and reused by the
next job that needs the same bytes.

`fetch_file` is plain HTTP and files (no Django): the copy grows in `<dest>.part` and is renamed to `dest` only
once its sha256 matches, so a file named `dest` is always whole. The token goes in the Authorization header only:
never in a URL, a log line or an error."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import requests
from django.conf import settings
from django.urls import reverse

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
RETRIES = 4  # consecutive attempts that brought no new byte
BACKOFF_S = 1.0
BACKOFF_MAX_S = 30.0
READ_BYTES = 1 << 20
REFUSALS = {401, 403, 404}


class DatasetFetchError(Exception):
    """The dataset could not be fetched or verified; the message says what happened and what to do."""


class _Transient(Exception):
    """A failure worth another attempt (network, a 5xx, a short body); the transfer resumes where it stopped."""


class _Part:
    """The `.part` file being written and the running sha256 of the bytes it holds."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.handle = open(path, "a+b")  # noqa: SIM115 (closed by close())
        self.hasher = hashlib.sha256()
        self.offset = self.handle.seek(0, os.SEEK_END)
        if self.offset > size:
            self.restart()
        self.resumed_at = self.offset
        self.handle.seek(0)
        for piece in iter(lambda: self.handle.read(READ_BYTES), b""):  # the kept bytes count in the digest
            self.hasher.update(piece)

    def write(self, piece: bytes) -> None:
        self.handle.write(piece)
        self.hasher.update(piece)
        self.offset += len(piece)

    def restart(self) -> None:
        self.handle.truncate(0)
        self.hasher = hashlib.sha256()
        self.offset = self.resumed_at = 0

    def finish(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()


@dataclass(frozen=True)
class _Source:
    """Where the bytes come from and what they must be."""

    url: str
    token: str
    sha256: str
    size: int
    timeout: tuple[float, float]
    retries: int
    backoff: float


def fetch_file(
    url: str,
    token: str,
    *,
    sha256: str,
    size: int,
    dest: Path,
    timeout: tuple[float, float] = (CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
    retries: int = RETRIES,
    backoff: float = BACKOFF_S,
    log: Callable[[str], None] | None = None,
) -> Path:
    """`dest`, holding the `size` bytes whose sha256 is `sha256`, fetched from `url` with `token` if needed.

    A `dest` already there whose sha256 matches is reused without a request; one that does not is deleted and
    fetched again. A `.part` left by a broken transfer is resumed with a Range request. Network failures, 5xx
    answers and short bodies are retried with backoff (up to `retries` attempts in a row that brought nothing),
    resuming each time. A fetched file whose sha256 differs is deleted and DatasetFetchError raised."""
    say = log or (lambda text: None)
    dest = Path(dest)
    source = _Source(url, token, sha256.lower(), size, timeout, retries, backoff)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with _locked(dest):  # two jobs on one host wanting the same dataset: the second waits and reuses the copy
            if dest.exists():
                if dest.stat().st_size == size and _file_sha256(dest) == source.sha256:
                    say(f"Dataset {dest.name}: the cached copy is verified (sha256 {sha256[:12]}); reusing it.")
                    return dest
                say(f"Dataset {dest.name}: the cached copy does not match its sha256; fetching it again.")
                dest.unlink()
            _fetch_into(dest, source, say)
    except OSError as exc:  # a full or read-only disk: the network is not to blame
        raise DatasetFetchError(f"Cannot write the dataset into {dest.parent}: {exc.strerror or exc}.") from exc
    say(f"Dataset {dest.name}: {size} bytes fetched and verified (sha256 {sha256[:12]}).")
    return dest


def _fetch_into(dest: Path, source: _Source, say: Callable[[str], None]) -> None:
    part_path = dest.with_name(dest.name + ".part")
    part = _Part(part_path, source.size)
    try:
        _fill(part, source, say)
        part.finish()
    finally:
        part.close()
    os.replace(part_path, dest)
    _fsync_dir(dest.parent)


def _fill(part: _Part, source: _Source, say: Callable[[str], None]) -> None:
    """Bring `part` to the whole file with the expected digest, retrying and resuming; once more from zero when a
    resumed copy fails the check (the kept bytes may be the damaged ones)."""
    session = requests.Session()
    session.headers.update({"Authorization": f"Bearer {source.token}", "Accept-Encoding": "identity"})
    fresh_retry_left = True
    with session:
        while True:
            if part.offset:
                say(f"Dataset: resuming at byte {part.offset} of {source.size}.")
            _transfer(session, part, source)
            got = part.hasher.hexdigest()
            if got == source.sha256:
                return
            if part.resumed_at and fresh_retry_left:
                say("Dataset: the resumed copy fails its sha256 check; fetching it again from the start.")
                part.restart()
                fresh_retry_left = False
                continue
            part.close()
            part.path.unlink(missing_ok=True)
            raise DatasetFetchError(
                f"The fetched dataset's sha256 is {got}, not the expected {source.sha256}; the copy was deleted. "
                "Its file in the console's store may be damaged: ask an admin to check the dataset version."
            )


def _transfer(session: requests.Session, part: _Part, source: _Source) -> None:
    """Receive until `part` holds the whole file; transient failures are retried, resuming at `part.offset`."""
    failures = 0
    while part.offset < source.size:
        before = part.offset
        try:
            _receive(session, part, source)
        except (_Transient, requests.RequestException) as exc:
            failures = 0 if part.offset > before else failures + 1
            if failures > source.retries:
                raise DatasetFetchError(
                    f"Could not fetch the dataset from {source.url} after {source.retries + 1} attempts in a row "
                    f"({_reason(exc)}); {part.offset} of {source.size} bytes are kept and the next attempt resumes "
                    "there. Check that this host reaches CONSOLE_INTERNAL_URL."
                ) from None
            time.sleep(min(source.backoff * 2 ** max(failures - 1, 0), BACKOFF_MAX_S))


def _receive(session: requests.Session, part: _Part, source: _Source) -> None:
    """One request from `part.offset` on, its body appended to `part` as it arrives."""
    headers = {"Range": f"bytes={part.offset}-"} if part.offset else {}
    with session.get(source.url, headers=headers, stream=True, timeout=source.timeout, allow_redirects=False) as answer:
        _check_answer(answer, part, source)
        for piece in answer.iter_content(READ_BYTES):
            if part.offset + len(piece) > source.size:
                part.restart()
                raise DatasetFetchError(f"The console sent more than the dataset's {source.size} bytes; nothing kept.")
            part.write(piece)
    if part.offset < source.size:
        raise _Transient(f"the transfer ended after {part.offset} of {source.size} bytes")


def _check_answer(response: requests.Response, part: _Part, source: _Source) -> None:
    status = response.status_code
    if status in REFUSALS:
        raise DatasetFetchError(f"The console refused the dataset ({status}): {_detail(response)}")
    if status == 416 or status >= 500 or status == 429:
        if status == 416:  # the kept bytes do not fit the file the console has: start over
            part.restart()
        raise _Transient(f"the console answered {status}")
    if status not in (200, 206):
        raise DatasetFetchError(f"The console answered {status} to the dataset request: {_detail(response)}")
    served = response.headers.get("X-Content-SHA256", "").lower()
    if served and served != source.sha256:
        raise DatasetFetchError(
            f"The console serves a file with sha256 {served}, not the {source.sha256} this job expects; the dataset "
            "version changed or its record is wrong."
        )
    if status == 200 and part.offset:
        part.restart()  # the whole file came instead of the rest
    elif status == 206 and not response.headers.get("Content-Range", "").startswith(f"bytes {part.offset}-"):
        part.restart()
        raise _Transient("the console answered another range than the one asked for")


def _detail(response: requests.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail) if detail else response.reason or "no reason given"


def _reason(exc: Exception) -> str:
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        return "connection failed or broke"
    return str(exc) or type(exc).__name__


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for piece in iter(lambda: handle.read(READ_BYTES), b""):
            digest.update(piece)
    return digest.hexdigest()


@contextlib.contextmanager
def _locked(dest: Path) -> Iterator[None]:
    with open(dest.with_name(dest.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fetch_dataset_version(version, token: str, *, log: Callable[[str], None] | None = None) -> Path:
    """The local copy of a dataset version on this host, `<DATASET_CACHE_DIR>/<sha256>.<format>`, fetched from
    CONSOLE_INTERNAL_URL with the job's fetch token when it is not there or not intact."""
    base = settings.CONSOLE_INTERNAL_URL.rstrip("/")
    url = base + reverse("dataset-version-file", kwargs={"pk": version.pk})
    dest = Path(settings.DATASET_CACHE_DIR) / f"{version.sha256}.{version.format}"
    if log:
        log(f"Dataset {version}: {version.size} bytes (sha256 {version.sha256[:12]}) from {base} into {dest.parent}.")
    return fetch_file(url, token, sha256=version.sha256, size=version.size, dest=dest, log=log)
