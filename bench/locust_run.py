"""A bounded locust run (bench/locustfile.py) against the console under daphne on loopback.

Shared by bench/bench_locust.py (50 users, 60 s) and tests/console/test_locust_smoke.py (a few users, a few seconds).
The caller's environment (DATABASE_URL, REDIS_URL, DATA_DIR) is the server's; users, sessions and tokens are made
in that database first, so it must be one the server reads (committed rows).
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROLES = ("admin", "engineer", "auditor")


@dataclass
class Endpoint:
    name: str
    requests: int
    failures: int
    p95_ms: float


@dataclass
class LoadResult:
    exit_code: int
    requests: int
    failures: int
    endpoints: list[Endpoint]
    output: str

    @property
    def failure_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 1.0


def credentials(path: Path) -> Path:
    """A user of each role with a session and an API token, written as the JSON the locustfile reads."""
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.test import Client

    from console.accounts.services.tokens import token_create
    from tests.factories import UserFactory

    users = get_user_model().objects
    held = {}
    made = {role: users.filter(username=f"load-{role}").first() for role in ROLES}
    made = {role: user or UserFactory(username=f"load-{role}", roles=[role]) for role, user in made.items()}
    for role, user in made.items():
        browser = Client(HTTP_HOST="127.0.0.1")
        browser.force_login(user)
        _token, raw = token_create(actor=made["admin"], user=user, name=f"load {role} {time.time():.0f}")
        held[role] = {"session": browser.cookies[settings.SESSION_COOKIE_NAME].value, "token": raw}
    path.write_text(json.dumps(held))
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def console_server(env: dict[str, str] | None = None, log_path: Path | None = None) -> Iterator[str]:
    """The console's ASGI application under daphne on 127.0.0.1; yields its base URL and stops it after. Its output
    goes to log_path when given (the errors behind failed requests), else nowhere."""
    port = _free_port()
    with open(log_path, "w+b") if log_path else tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-v", "0", "-b", "127.0.0.1", "-p", str(port), "console.asgi:application"],
            cwd=ROOT,
            env={**(env or os.environ), "DJANGO_SETTINGS_MODULE": "bench.server_settings"},
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        raise RuntimeError(f"daphne did not start: {log.read()[-2000:]!r}") from None
                    time.sleep(0.1)
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def run_locust(host: str, creds: Path, *, users: int, spawn_rate: int, seconds: int, work: Path) -> LoadResult:
    """locust --headless against host, bounded by --run-time (and a hard stop 60 s past it); its stats CSV read."""
    from django.conf import settings

    prefix = work / "locust"
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(ROOT / "bench" / "locustfile.py"),
        "--headless",
        "-u",
        str(users),
        "-r",
        str(spawn_rate),
        "--run-time",
        f"{seconds}s",
        "--stop-timeout",
        "5",
        "--host",
        host,
        "--exit-code-on-error",
        "1",
        "--csv",
        str(prefix),
        "--only-summary",
        "--skip-log-setup",
    ]
    env = dict(os.environ, LOCUST_CONSOLE_CREDENTIALS=str(creds), LOCUST_SESSION_COOKIE=settings.SESSION_COOKIE_NAME)
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=seconds + 60)
    endpoints, total = [], None
    with open(f"{prefix}_stats.csv", encoding="utf-8") as stats:
        for row in csv.DictReader(stats):
            entry = Endpoint(row["Name"], int(row["Request Count"]), int(row["Failure Count"]), float(row["95%"] or 0))
            if row["Name"] == "Aggregated":
                total = entry
            else:
                endpoints.append(entry)
    failures = Path(f"{prefix}_failures.csv")
    reasons = failures.read_text(encoding="utf-8") if failures.exists() else ""
    return LoadResult(
        done.returncode,
        total.requests if total else 0,
        total.failures if total else 0,
        endpoints,
        (reasons + done.stdout + done.stderr)[-4000:],
    )
