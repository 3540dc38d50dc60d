"""Run the whole console on one machine: web (daphne, HTTP + websockets), the inference gateway (uvicorn, on
GATEWAY_PORT), Celery worker, Celery beat.

Without REDIS_URL it first starts the private redis-server under DATA_DIR and stops it last.
Children get their own sessions so a Ctrl-C reaches only this supervisor, which then stops them in
order (web first, so no new work arrives; beat; worker; redis) and waits for each.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from console.devserver import embedded_redis
from deployments.registry.layout import ensure_store
from workers.agent import local_host_name


@dataclass
class Child:
    name: str
    args: list[str]
    process: subprocess.Popen | None = None


@dataclass
class Supervisor:
    host: str
    port: int
    worker_concurrency: int = 4
    say: Callable[[str], None] = print
    children: list[Child] = field(default_factory=list)
    redis: embedded_redis.EmbeddedRedis | None = None
    _stopping: bool = False

    def commands(self) -> list[Child]:
        python = sys.executable
        return [
            Child("web", [python, "-m", "daphne", "-b", self.host, "-p", str(self.port), "console.asgi:application"]),
            # Applications call models here (/v1, /llm); a service of its own, measured by bench/bench_gateway.py.
            Child(
                "gateway",
                [
                    python,
                    "-m",
                    "uvicorn",
                    "--host",
                    self.host,
                    "--port",
                    str(self.gateway_port),
                    "--no-access-log",
                    "--log-level",
                    "warning",
                    "console.gateway_asgi:application",
                ],
            ),
            # The local worker is also this machine's GPU agent (queue host.<name>).
            Child(
                "worker",
                [
                    python,
                    "-m",
                    "celery",
                    "-A",
                    "console",
                    "worker",
                    "-l",
                    "INFO",
                    "--concurrency",
                    str(self.worker_concurrency),
                    "-n",
                    "worker@%h",
                    "-Q",
                    f"celery,host.{self.agent_name}",
                ],
            ),
            Child(
                "beat",
                [
                    python,
                    "-m",
                    "celery",
                    "-A",
                    "console",
                    "beat",
                    "-l",
                    "INFO",
                    "-s",
                    str(Path(settings.DATA_DIR) / "celerybeat-schedule"),
                ],
            ),
        ]

    @property
    def gateway_port(self) -> int:
        # Port 0 (tests) asks for any free port; the gateway then takes any free one too.
        return settings.GATEWAY_PORT if self.port else 0

    @property
    def agent_name(self) -> str:
        return settings.AGENT_HOST_NAME or local_host_name()

    def environment(self) -> dict[str, str]:
        env = dict(os.environ, DATA_DIR=str(settings.DATA_DIR), PYTHONUNBUFFERED="1", AGENT_HOST_NAME=self.agent_name)
        # One machine: model servers run as local processes (serve.py, or a native TGI) unless told otherwise.
        env.setdefault("AGENT_RUNTIME", "process")
        if self.redis is not None:
            env["REDIS_URL"] = self.redis.url
        return env

    def start(self) -> None:
        ensure_store(settings.MODEL_STORE)  # before the web answers: imports go there on a fresh install
        empty_metrics_dir(Path(settings.PROMETHEUS_MULTIPROC_DIR))
        if not os.environ.get("REDIS_URL"):
            self.redis = embedded_redis.start(Path(settings.DATA_DIR))
            self.say(f"redis: private redis-server on {self.redis.url} (port {self.redis.port})")
        env = self.environment()
        for child in self.commands():
            child.process = subprocess.Popen(child.args, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
            self.children.append(child)
            self.say(f"{child.name}: started (pid {child.process.pid})")

    def wait_ready(self, timeout: float = 120) -> None:
        """Return once web answers /healthz; raise if a child dies or time runs out."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host  # noqa: S104
        url = f"http://{host}:{self.port}/healthz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for child in self.children:
                if child.process.poll() is not None:
                    raise RuntimeError(f"{child.name} exited with status {child.process.returncode} while starting")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.25)
        raise RuntimeError(f"web did not answer {url} within {timeout:.0f}s")

    def wait(self) -> int:
        """Block until a signal asks us to stop or a child dies; returns the exit status."""
        received: list[int] = []

        def on_signal(signum, _frame) -> None:
            received.append(signum)

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not received:
                for child in self.children:
                    code = child.process.poll()
                    if code is not None:
                        self.say(f"{child.name} exited with status {code}; stopping the console")
                        return code or 1
                time.sleep(0.2)
            self.say("stopping (signal received)")
            return 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop(self, grace: float = 20) -> None:
        for child in self.children:
            if child.process and child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in self.children:
            if child.process is None:
                continue
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(f"{child.name}: did not stop within {grace}s; killing it")
                os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait()
            self.say(f"{child.name}: stopped")
        if self.redis is not None:
            self.redis.stop()
            self.say("redis: stopped")


def empty_metrics_dir(directory: Path) -> None:
    """prometheus_client's multiprocess files of an earlier run go before any process writes new ones (its docs ask
    for an empty directory at start: files of dead processes would otherwise be summed forever)."""
    directory.mkdir(parents=True, exist_ok=True)
    for path in directory.glob("*.db"):
        path.unlink(missing_ok=True)


def lock_down_data_dir(data_dir: Path) -> None:
    """`make run` keeps its database, keys and private Redis to this user: umask 077 for this process and every
    child, DATA_DIR 0700, and what already lies in it (an older install's database, WAL files, keys) 0600.
    The model store writer sets its own modes so servers can read the weights (downloads.publishing)."""
    os.umask(0o077)
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    for path in data_dir.iterdir():
        if path.is_file() and not path.is_symlink():
            os.chmod(path, 0o600)
