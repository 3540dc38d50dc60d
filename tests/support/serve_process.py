"""serve.py as a real subprocess in the ML environment, for tests and benchmarks: start, wait until it
answers /health, read its output lines, stop it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]


def ml_python() -> str | None:
    """The ML environment's interpreter when it exists (ML_PYTHON, default .venv-ml/bin/python)."""
    path = Path(os.environ.get("ML_PYTHON") or ROOT / ".venv-ml" / "bin" / "python")
    return str(path) if path.is_file() else None


def ml_env(extra: dict | None = None) -> dict:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "HOME": os.environ.get("HOME", "/tmp"),
        "HF_HUB_OFFLINE": "1",
    }
    env.update(extra or {})
    return env


def make_model(out_dir: Path, size: str = "tiny", seed: int = 0) -> Path:
    if not (out_dir / "config.json").is_file():
        subprocess.run(
            [ml_python(), "-m", "workers.jobs.tiny_model", str(out_dir), "--size", size, "--seed", str(seed)],
            check=True,
            env=ml_env(),
            cwd=ROOT,
            capture_output=True,
            timeout=300,
        )
    return out_dir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServeProcess:
    ready_line = "Connected"  # printed once the port listens

    def __init__(self, model_dir: Path | str, *args: str, env: dict | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [
            ml_python(),
            "-m",
            "workers.jobs.serve",
            "--model-id",
            str(model_dir),
            "--hostname",
            "127.0.0.1",
            "--port",
            str(self.port),
            *args,
        ]
        self.env = ml_env(env)
        self.lines: list[str] = []
        self.refused_before_ready = False
        self.process: subprocess.Popen | None = None

    def start(self) -> ServeProcess:
        self.process = subprocess.Popen(
            self.command,
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout: float = 120) -> ServeProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve.py exited with {self.process.returncode}:\n{self.output}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except requests.ConnectionError:
                if not any(self.ready_line in line for line in self.lines):
                    self.refused_before_ready = True
            time.sleep(0.1)
        raise TimeoutError(f"serve.py not ready after {timeout} s:\n{self.output}")

    def wait_exit(self, timeout: float = 120) -> int:
        code = self.process.wait(timeout)
        time.sleep(0.1)  # let the reader thread take the last lines
        return code

    def stop(self) -> int | None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        return self.process.returncode if self.process else None
