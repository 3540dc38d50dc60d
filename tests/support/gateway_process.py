"""The inference gateway as it runs in production, for tests and benchmarks: uvicorn serving
console.gateway_asgi in its own process (env says which database, Redis and DATA_DIR), started and waited for on
/health, stopped with SIGTERM."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import requests
from django.conf import settings

from tests.support.serve_process import ROOT, free_port

UVICORN = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--no-access-log"]


class GatewayProcess:
    def __init__(self, env: dict, app: str = "console.gateway_asgi:application") -> None:
        self.app = app  # another module only for experiments (a gateway with timing wrapped around it)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(settings.DATA_DIR) / f"gateway-{self.port}.log"
        self.env = env
        self.process: subprocess.Popen | None = None

    def start(self) -> GatewayProcess:
        log = open(self.log_path, "w")  # noqa: SIM115  (the child writes it until stop)
        self.process = subprocess.Popen(
            [*UVICORN, "--port", str(self.port), self.app],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the gateway exited with {self.process.returncode}:\n{self.log}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except requests.ConnectionError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the gateway did not answer within 60 s:\n{self.log}")

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
