"""Real processes for the live monitoring test: the console under daphne (as the `web` service runs it) and Debian's
Prometheus with the shipped scrape jobs and rules, pointed at that console and made fast (1 s scrapes and discovery
refreshes)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import requests
import yaml

from tests.support.serve_process import ROOT, free_port

SHIPPED = ROOT / "deploy" / "monitoring" / "prometheus"


def wait_until(check, timeout: float, what: str, interval: float = 0.05):
    """check()'s first truthy answer within timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = check()
        if answer:
            return answer
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout} s")


class Service:
    """A child process started, waited for on an HTTP path, stopped with SIGTERM; its output in a log file."""

    name = "service"
    ready_path = "/"

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{self.name}-{self.port}.log"
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, env: dict | None = None, timeout: float = 60) -> Service:
        log = open(self.log_path, "w")  # noqa: SIM115  (the child writes it until stop)
        self.process = subprocess.Popen(
            self.command(), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log}")
            try:
                return requests.get(f"{self.url}{self.ready_path}", timeout=2).status_code == 200
            except (requests.ConnectionError, requests.Timeout):  # a loaded machine's server may be slow to answer
                return False

        try:
            wait_until(ready, timeout, f"{self.name} answering {self.ready_path}", interval=0.1)
        except AssertionError:
            self.stop()
            raise AssertionError(f"{self.name} did not answer within {timeout} s:\n{self.log}") from None
        return self

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
                self.process.wait(5)


class ConsoleProcess(Service):
    """The console's ASGI application under daphne, on the test database (env says which)."""

    name = "console"
    ready_path = "/healthz"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "console.asgi:application"]


class PrometheusProcess(Service):
    """/usr/bin/prometheus with the shipped scrape jobs and rules, discovery at `console_url`, the token from a file,
    every scrape and discovery refresh `interval` seconds apart."""

    name = "prometheus"
    ready_path = "/-/ready"

    def __init__(self, work: Path, console_url: str, token: str, interval: str = "1s") -> None:
        super().__init__(work)
        self.work = work
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        assert Path(binary).is_file(), "Prometheus is needed (Debian's package: apt-get install prometheus)"
        self.binary = binary
        self.interval = interval
        token_file = work / "metrics-token"
        token_file.write_text(token)
        rules = work / "rules"
        shutil.copytree(SHIPPED / "rules", rules)
        config = yaml.safe_load((SHIPPED / "prometheus.yml").read_text())
        config["global"].update(scrape_interval=interval, scrape_timeout=interval, evaluation_interval=interval)
        config["rule_files"] = [f"{rules}/*.yml"]
        for job in config["scrape_configs"]:
            if "authorization" in job:
                job["authorization"]["credentials_file"] = str(token_file)
            for discovery in job.get("http_sd_configs", []):
                assert discovery["url"].startswith("http://web:8000/")
                discovery["url"] = discovery["url"].replace("http://web:8000", console_url)
                discovery["refresh_interval"] = interval
                discovery["authorization"]["credentials_file"] = str(token_file)
            if job["job_name"] == "prometheus":
                job["static_configs"] = [{"targets": [f"127.0.0.1:{self.port}"]}]
        self.config_path = work / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def command(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.work / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]

    def api(self, path: str, **params) -> dict | list:
        response = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """The instant vector `expr` evaluates to now: [{"metric": {...}, "value": [t, "v"]}, ...]."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return data["result"]

    def active_targets(self, job: str) -> list[dict]:
        return [
            target for target in self.api("targets", state="active")["activeTargets"] if target["scrapePool"] == job
        ]
