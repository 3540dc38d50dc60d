"""The production compose stack, built and started for real (tests/deploy/test_compose_up.py, scripts/bundle*).

`build_stack_images()` makes every image the stack runs the way `make bundle` does: the Debian base debootstrapped
from the configured mirror and `docker import`ed (scripts/bundle_base.sh), the control plane's pinned wheels
(scripts/bundle_wheels.py) and the images on that base (scripts/bundle_images.sh). Base and wheels are kept in
BUNDLE_CACHE (default build/bundle-cache) and Docker's layer cache, so a second build in the same run costs seconds.

`ComposeStack` runs a copy of docker-compose.yml under its own project name, with its own volume names and the proxy
published on a free loopback port, so it never touches an operator's stack on the same machine.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import requests
import urllib3
import yaml

ROOT = Path(__file__).resolve().parents[2]
BUNDLE_CACHE = Path(os.environ.get("BUNDLE_CACHE", ROOT / "build" / "bundle-cache"))
HOSTNAME = "console.compose.test"


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a command; on failure the error names its output."""
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


def build_stack_images(python: str) -> dict[str, float]:
    """Base image, console wheels and the stack's images; returns the seconds each step took."""
    timings = {}
    started = time.monotonic()
    run([str(ROOT / "scripts" / "bundle_base.sh")])
    timings["base"] = time.monotonic() - started
    started = time.monotonic()
    if not (BUNDLE_CACHE / "console.lock.txt").is_file():
        run([python, str(ROOT / "scripts" / "bundle_wheels.py"), "console", str(BUNDLE_CACHE)])
    timings["wheels"] = time.monotonic() - started
    started = time.monotonic()
    run(
        [str(ROOT / "scripts" / "bundle_images.sh"), str(BUNDLE_CACHE), "services", "console"],
        env={**os.environ, "PYTHON": python},
    )
    timings["images"] = time.monotonic() - started
    return timings


def fernet_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


class ComposeStack:
    """A copy of the production compose file in `directory`, run as project `project`."""

    def __init__(self, directory: Path, project: str) -> None:
        self.directory = directory
        self.project = project
        self.env = {**os.environ, "COMPOSE_PROJECT_NAME": project}
        self.postgres_password = secrets.token_urlsafe(16)

    def write(self) -> None:
        compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
        # Its own volumes (the file's fixed names belong to an operator's stack) and a free loopback port.
        for key, volume in compose["volumes"].items():
            volume["name"] = f"{self.project}_{key}"
        compose["services"]["proxy"]["ports"] = ["127.0.0.1::443"]
        (self.directory / "docker-compose.yml").write_text(yaml.safe_dump(compose, sort_keys=False))
        shutil.copytree(ROOT / "deploy" / "nginx", self.directory / "deploy" / "nginx")
        (self.directory / "deploy" / "certs").mkdir(parents=True)
        shutil.copy(ROOT / "deploy" / "make-self-signed-cert.sh", self.directory / "deploy")
        run([str(self.directory / "deploy" / "make-self-signed-cert.sh"), HOSTNAME])
        values = {
            "COMPOSE_PROJECT_NAME": self.project,
            "CONSOLE_HOSTNAME": HOSTNAME,
            "POSTGRES_PASSWORD": self.postgres_password,
            "DATABASE_APP_PASSWORD": secrets.token_urlsafe(16),
            "SECRET_KEY": secrets.token_urlsafe(50),
            "SECRETS_ENCRYPTION_KEYS": fernet_key(),
            "AUDIT_CHECKPOINT_KEY": secrets.token_urlsafe(32),
        }
        (self.directory / ".env").write_text("".join(f"{k}={v}\n" for k, v in values.items()))

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return run(["docker-compose", "--no-ansi", *args], cwd=self.directory, env=self.env, timeout=timeout)

    def up(self) -> None:
        self.compose("up", "-d", "--no-build")

    def down(self, volumes: bool = False) -> None:
        self.compose("down", "--remove-orphans", *(["--volumes"] if volumes else []))

    def https_port(self) -> int:
        out = self.compose("port", "proxy", "443").stdout.strip()
        return int(out.rsplit(":", 1)[1])

    def logs(self) -> str:
        return subprocess.run(
            ["docker-compose", "--no-ansi", "logs", "--no-color", "--tail", "40"],
            cwd=self.directory,
            env=self.env,
            capture_output=True,
            text=True,
        ).stdout

    def manage(self, *args: str) -> str:
        return self.compose("exec", "-T", "web", "python", "manage.py", *args).stdout


class ConsoleClient:
    """The console over HTTPS through the proxy, as a browser on console.compose.test would reach it."""

    def __init__(self, port: int) -> None:
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        self.base = f"https://127.0.0.1:{port}"
        self.session = requests.Session()
        self.session.headers["Host"] = HOSTNAME

    def get(self, path: str, **kwargs) -> requests.Response:
        # The self-signed certificate is for HOSTNAME, not 127.0.0.1: TLS is checked, not the name. verify per
        # request, because REQUESTS_CA_BUNDLE in the environment would override a session's verify.
        return self.session.get(
            self.base + path, timeout=kwargs.pop("timeout", 30), allow_redirects=False, verify=False, **kwargs
        )

    def wait_for_login_page(self, deadline_s: float) -> requests.Response:
        deadline = time.monotonic() + deadline_s
        last: object = None
        while time.monotonic() < deadline:
            try:
                response = self.get("/login/", timeout=10)
                if response.status_code == 200:
                    return response
                last = response.status_code
            except requests.RequestException as exc:
                last = exc
            time.sleep(2)
        raise AssertionError(f"no login page over HTTPS within {deadline_s} s (last: {last})")

    def login(self, username: str, password: str) -> requests.Response:
        page = self.get("/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        return self.session.post(
            self.base + "/login/",
            data={"username": username, "password": password, "csrfmiddlewaretoken": token},
            headers={"Referer": f"https://{HOSTNAME}/login/"},
            allow_redirects=False,
            timeout=30,
            verify=False,
        )
