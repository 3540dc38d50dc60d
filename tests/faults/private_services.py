"""Private service instances for fault tests: a redis-server and a PostgreSQL cluster of the test's own.

Faults are injected only here, never into the machine's shared PostgreSQL and Redis the rest of the suite runs
against. Each instance keeps its port across restarts, so the console's processes, configured once through
REDIS_URL / DATABASE_URL, see the same address go away and come back, as a restarted server looks in production.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import redis

from tests.support.serve_process import free_port


def _wait(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what}: not within {timeout} s")


class PrivateRedis:
    """redis-server on a free loopback port with its data (append-only file) in a temporary directory."""

    def __init__(self, root: Path | None = None, *, appendonly: bool = True) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fault-redis-", dir=root))
        self.port = free_port()
        self.appendonly = appendonly
        self.process: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    @property
    def log_path(self) -> Path:
        return self.dir / "redis.log"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1)

    def ping(self) -> bool:
        try:
            return bool(self.client().ping())
        except (redis.RedisError, OSError):
            return False

    def start(self, timeout: float = 15) -> PrivateRedis:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is needed for the Redis fault tests (apt-get install redis-server)"
        # appendfsync always: what Redis acknowledged survives the restart (a broker's queue as the console
        # deploys it); --save "" so no background dump competes for the two test cores.
        args = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.dir)]
        args += ["--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always", "--save", ""]
        args += ["--logfile", str(self.log_path), "--daemonize", "no"]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        _wait(lambda: self.process.poll() is not None or self.ping(), timeout, "redis-server answering")
        if self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.process.returncode}:\n{self.log_path.read_text()}")
        return self

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM: redis-server closes its clients and (with appendonly) has its file on disk."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a stopped process would not act on SIGTERM
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    @contextmanager
    def unreachable(self) -> Iterator[None]:
        """The server does not answer while inside: SIGSTOP freezes it with its sockets open, the way a host
        cut off by the network or a hung server looks to clients (connects and requests hang until their
        own timeouts), which is the harder case than a refused connection. SIGCONT after: no data is lost,
        so what the test then sees is recovery alone."""
        assert self.process and self.process.poll() is None
        self.process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.process.send_signal(signal.SIGCONT)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrivateRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    assert candidates, f"PostgreSQL's {name} is needed for the PostgreSQL fault tests"
    return str(candidates[-1])


def _as_postgres() -> list[str]:
    """initdb and the server refuse to run as root: run them as the `postgres` OS user when we are root."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


class PrivatePostgres:
    """A PostgreSQL cluster from initdb in a temporary directory, trust authentication, on a free port."""

    def __init__(self, root: Path | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fault-pg-", dir=root))
        self.data = self.dir / "data"
        self.socket_dir = self.dir / "sock"
        self.log_path = self.dir / "postgres.log"
        self.port = free_port()
        self.user = "postgres"
        self.initialised = False
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")

    def _run(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run(
            [*_as_postgres(), *args], capture_output=True, text=True, timeout=timeout, cwd=self.dir, check=False
        )
        if done.returncode:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return done.stdout

    def url(self, database: str = "postgres") -> str:
        return f"postgres://{self.user}@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 60) -> PrivatePostgres:
        if not self.initialised:
            self._run(
                _pg_bin("initdb"), "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8", "--no-sync"
            )
            self.socket_dir.mkdir()
            if os.geteuid() == 0:
                shutil.chown(self.socket_dir, "postgres", "postgres")
            self.initialised = True
        # fsync off: the faults here are process restarts, not power loss, and the test machine's disk is slow.
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.socket_dir} -c fsync=off"
        self._run(
            _pg_bin("pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log_path),
            "-o",
            options,
            "-w",
            "-t",
            str(int(timeout)),
            "start",
            timeout=timeout + 10,
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        """fast: the server ends every session (clients see their connections drop) and shuts down cleanly;
        immediate: it exits at once, like a crash (recovery from the WAL on the next start)."""
        if self.initialised and (self.data / "postmaster.pid").exists():
            self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def createdb(self, name: str) -> str:
        """A new database; returns its DATABASE_URL."""
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def answers(self) -> bool:
        try:
            with psycopg.connect(self.url(), connect_timeout=1) as connection:
                connection.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def cleanup(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()
