"""Issue 22, Deliver 2: the production compose stack started for real, from images built on the bundle's own Debian
base (nothing pulled from a registry), with Debian's docker-compose 1.29. PostgreSQL, Redis, migrate, web, gateway,
worker, beat and the TLS proxy come up (the monitoring profile stays off); the login page answers over HTTPS through
the proxy; a worker answers /api/v1/ping; `down` and `up` again keep the data: a user created before logs in after.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from tests.deploy.compose_stack import ROOT, ComposeStack, ConsoleClient, build_stack_images

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ARTIFACTS = ROOT / "test-artifacts" / "compose"
DEFAULT_SERVICES = {"postgres", "redis", "migrate", "web", "gateway", "worker", "beat", "proxy"}


def need_tools() -> None:
    """Fails loudly (never skips) when what the stack needs is missing: CI installs all of it."""
    for tool in ("docker", "docker-compose", "debootstrap"):
        assert shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists(), (
            f"{tool} is not installed (.ci/run installs it)"
        )


def test_compose_stack_up_https_ping_and_data_survive_down_up(tmp_path):
    need_tools()
    timings: dict[str, float] = {}
    started = time.monotonic()
    timings.update(build_stack_images(sys.executable))
    stack = ComposeStack(tmp_path, f"llmdeploy-ci{os.getpid()}")
    stack.write()
    try:
        phase = time.monotonic()
        stack.up()
        timings["first_up"] = time.monotonic() - phase
        running = set(stack.compose("ps", "--services", "--filter", "status=running").stdout.split())
        assert running >= DEFAULT_SERVICES - {"migrate"}, stack.logs()
        assert not running & {"prometheus", "grafana"}, "the monitoring profile started"

        client = ConsoleClient(stack.https_port())
        page = client.wait_for_login_page(180)
        assert 'name="password"' in page.text
        assert client.get("/healthz").json()["status"] == "ok"

        admin = stack.compose("exec", "-T", "web", "cat", "/var/lib/console/initial_admin_password").stdout
        password = admin.split("password:", 1)[1].strip()
        assert client.login("admin", password).status_code == 302
        ping = client.get("/api/v1/ping", timeout=60)
        assert ping.status_code == 200, ping.text
        # The worker names itself by its hostname, which Docker sets to the container's short id.
        worker_container = stack.compose("ps", "-q", "worker").stdout.strip()
        assert ping.json()["pong"] is True and ping.json()["worker"] == worker_container[:12]
        timings["ready"] = time.monotonic() - phase

        stack.manage(
            "shell",
            "-c",
            "from django.contrib.auth import get_user_model; "
            "get_user_model().objects.create_user('kept-across-restarts', password='still-here-after-down-1')",
        )
        phase = time.monotonic()
        stack.down()
        stack.up()
        again = ConsoleClient(stack.https_port())
        again.wait_for_login_page(180)
        assert again.login("kept-across-restarts", "still-here-after-down-1").status_code == 302, stack.logs()
        assert ConsoleClient(stack.https_port()).login("admin", password).status_code == 302
        timings["down_up"] = time.monotonic() - phase
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.down(volumes=True)
    timings["total"] = time.monotonic() - started
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "compose-up-timings.json").write_text(
        json.dumps({k: round(v, 1) for k, v in timings.items()}, indent=2)
    )
    print("compose stack timings (s):", {k: round(v, 1) for k, v in timings.items()})
