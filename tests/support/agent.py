"""A real Celery worker acting as one host's agent (it consumes `host.<name>`), on the test database."""

from __future__ import annotations

import os
import signal
import subprocess

from tests.conftest import _start_worker, _test_database_url, _wait_and_stop

# Short timings so stops, health checks and lost leases happen within a test.
WORKER_ENV = {
    "JOB_CANCEL_POLL_SECONDS": "0.2",
    "DEPLOY_HEALTH_SECONDS": "0.5",
    "DEPLOY_STOP_GRACE_SECONDS": "20",
    "JOB_LEASE_SECONDS": "4",
}


class Agent:
    """A real Celery worker consuming one host's queue, on the test database."""

    def __init__(self, redis_url: str, host: str, pool: str = "solo", **env_extra: str) -> None:
        env = {"REDIS_URL": redis_url, "DATABASE_URL": _test_database_url(), **WORKER_ENV, **env_extra}
        self.process, log = _start_worker(env, f"agent-{host}", f"host.{host}", pool=pool)
        self.steps = _wait_and_stop(self.process, log, f"host.{host}")
        next(self.steps)

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        try:
            next(self.steps)
        except StopIteration:
            pass
        except subprocess.TimeoutExpired:
            self.process.kill()
