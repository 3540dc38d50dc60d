"""The console's processes as deployed (daphne, a Celery worker, Celery beat), pointed through their environment
at the services a fault test owns, so the fault reaches them the way it would in production."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from tests.conftest import _start_worker
from tests.deploy.prometheus_live import ConsoleProcess
from tests.support.serve_process import ROOT

# Short leases and reaper runs so that what the reaper repairs (a dispatch Redis lost) is seen within a trial.
BEAT = [sys.executable, "-m", "celery", "-A", "console", "beat", "-l", "INFO"]
FAST = {"JOB_LEASE_SECONDS": "6", "JOB_REAPER_SECONDS": "2", "JOB_CANCEL_POLL_SECONDS": "0.5"}


def console_env(*, database_url: str, redis_url: str, **extra: str) -> dict:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "DATA_DIR": str(settings.DATA_DIR),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "PYTHONUNBUFFERED": "1",
        **FAST,
        **extra,
    }


def manage(env: dict, *args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"manage.py {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def program(env: dict, *args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "tests.faults.console_programs", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"console_programs {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def _wait_for_log(process: subprocess.Popen, path: Path, text: str, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited with {process.returncode}:\n{path.read_text()[-3000:]}")
        if text in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} not ready within {timeout} s:\n{path.read_text()[-3000:]}")


@dataclass
class ConsoleStack:
    """web (daphne), one worker consuming `celery` with the test job kinds, and beat (unless with_beat is
    False), on `env`."""

    env: dict
    work: Path
    with_beat: bool = True
    web: ConsoleProcess | None = None
    worker: subprocess.Popen | None = None
    beat: subprocess.Popen | None = None
    _logs: list = field(default_factory=list)

    def start(self) -> ConsoleStack:
        extra = {key: value for key, value in self.env.items() if os.environ.get(key) != value}
        self.worker, log = _start_worker(extra, "fault-worker", "celery", include="tests.support.job_handlers")
        self._logs.append(log)
        self.worker_log = Path(log.name)
        self.beat_log = self.work / "beat.log"
        if self.with_beat:
            beat_out = open(self.beat_log, "w")  # noqa: SIM115  (beat writes it until stop)
            self._logs.append(beat_out)
            self.beat = subprocess.Popen(
                [*BEAT, "-s", str(self.work / "celerybeat-schedule"), "--pidfile="],
                cwd=ROOT,
                env=self.env,
                stdout=beat_out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # The worker and beat start while daphne does (starting each is mostly CPU: the two overlap the waits).
        self.web = ConsoleProcess(self.work).start(self.env)
        _wait_for_log(self.worker, self.worker_log, " ready.", 90, "the Celery worker")
        if self.with_beat:
            _wait_for_log(self.beat, self.beat_log, "beat: Starting", 60, "Celery beat")
        return self

    def dead(self) -> list[str]:
        """The processes that are no longer running."""
        processes = {"web": self.web.process if self.web else None, "worker": self.worker}
        if self.with_beat:
            processes["beat"] = self.beat
        return [name for name, process in processes.items() if process is None or process.poll() is not None]

    def stop(self) -> None:
        """SIGTERM to all at once, then wait for each (one after another cost seconds per process)."""
        processes = [p for p in (self.web.process if self.web else None, self.worker, self.beat) if p]
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in self._logs:
            log.close()
