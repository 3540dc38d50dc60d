"""In a real Chromium against a real daphne, in English and in Chinese: an admin lands on the fleet dashboard and
its GPU charts draw from the console's samples; a deployment's serving charts and a host's per-GPU charts draw
theirs (each chart a canvas with its series' colour on it), the deployment's card names its source, a window button
redraws from the JSON endpoint, and no page logs an error. Screenshots go to test-artifacts/screenshots/."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from tests.e2e.live import ConsoleLiveServerTestCase
from tests.factories import PASSWORD, DeploymentFactory, GpuFactory, HostFactory, JobFactory, UserFactory

pytestmark = pytest.mark.browser
GB = 10**9
# Pixels of the first series' colour (#0d6efd, console/monitoring_charts.js) on a chart's canvas: its line is drawn.
BLUE_PIXELS = """canvas => {
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let found = 0;
  for (let i = 0; i < data.length; i += 4) {
    const [r, g, b, a] = [data[i], data[i + 1], data[i + 2], data[i + 3]];
    if (a > 200 && Math.abs(r - 13) < 40 && Math.abs(g - 110) < 40 && b > 215) found++;
  }
  return found;
}"""


def minutes_back(count: int) -> list[datetime]:
    stamp = int(timezone.now().timestamp())
    stamp -= stamp % 60
    return [datetime.fromtimestamp(stamp - 60 * n, tz=UTC) for n in range(1, count + 1)]


def seed() -> dict:
    from deployments.models import Deployment, Gpu, GpuReservation, Job
    from deployments.monitoring.models import DeploymentSample, GpuSample

    now = timezone.now()
    host = HostFactory(name="gpu-node-1", last_heartbeat=now - timedelta(seconds=8))
    HostFactory(name="gpu-node-2", status="offline", last_heartbeat=now - timedelta(hours=5))
    gpus = [
        GpuFactory(
            host=host,
            name="NVIDIA H100 80GB HBM3",
            memory_total=80 * GB,
            telemetry={"utilization": 70.0 + 10 * i, "memory_used": (50 + 10 * i) * GB, "memory_total": 80 * GB},
            telemetry_at=now - timedelta(seconds=8),
        )
        for i in range(2)
    ]
    GpuFactory(host=host, name="NVIDIA H100 80GB HBM3", memory_total=80 * GB, health=Gpu.Health.DEGRADED)
    GpuReservation.objects.create(gpu=gpus[0], memory_bytes=60 * GB, holder="deployment:1")
    chat = DeploymentFactory(name="chat-llama", state=Deployment.State.RUNNING, host=host, gpu_indexes=[0])
    DeploymentFactory(name="summarizer", state=Deployment.State.FAILED, failure_cause="out-of-memory")
    JobFactory(status=Job.Status.RUNNING)
    JobFactory(status=Job.Status.FAILED, failure_cause="disk-full", finished_at=now - timedelta(minutes=30))
    times = minutes_back(180)
    GpuSample.objects.bulk_create(
        GpuSample(
            gpu=gpu,
            at=at,
            utilization=40 + 30 * i + (n % 20),
            memory_used=(40 + 10 * i) * GB,
            memory_total=80 * GB,
            temperature=55 + 12 * i + n % 10,
            power_w=350 + 100 * i + n % 50,
        )
        for i, gpu in enumerate(gpus)
        for n, at in enumerate(times)
    )
    DeploymentSample.objects.bulk_create(
        DeploymentSample(
            deployment=chat,
            at=at,
            requests=60 + n % 15,
            errors=n % 7 == 0,
            completion_tokens=6000,
            tokens_per_s=100.0 + n % 30,
            latency_p50_ms=180.0 + n % 25,
            latency_p95_ms=420.0 + n % 60,
            ttft_p50_ms=40.0 + n % 10,
            queue=n % 5,
        )
        for n, at in enumerate(times[:120])
    )
    return {"host": host.pk, "deployment": chat.pk}


class FleetChartsTests(ConsoleLiveServerTestCase):
    serve_static = True

    @pytest.fixture(autouse=True)
    def _fixtures(self, browser, artifacts):
        self.browser, self.artifacts = browser, artifacts

    def drawn(self, page, box: str, charts: int) -> None:
        """The box's charts are ready, with points, one canvas each, and the first series' line on every canvas."""
        page.wait_for_selector(f"#{box}[data-state='ready']", state="attached", timeout=15_000)
        assert int(page.get_attribute(f"#{box}", "data-points")) > 0
        canvases = page.locator(f"#{box} figure[data-chart] canvas")
        assert canvases.count() == charts, (box, canvases.count())
        for index in range(charts):
            assert canvases.nth(index).evaluate(BLUE_PIXELS) > 30, (box, index)
        assert page.is_hidden(f"#{box} [data-empty]") and page.is_hidden(f"#{box} [data-failed]")

    def test_fleet_dashboard_and_charts_in_english_and_chinese(self):
        admin = UserFactory(username="fleet-admin", roles=["admin"])
        ids = seed()
        for language in ("en", "zh-hans"):
            context = self.browser.new_context(viewport={"width": 1400, "height": 1000})
            context.add_cookies(
                [{"name": settings.LANGUAGE_COOKIE_NAME, "value": language, "url": self.live_server_url}]
            )
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error, errors=errors: errors.append(str(error)))
            page.on("console", lambda m, errors=errors: errors.append(m.text) if m.type == "error" else None)
            page.goto(self.live_server_url + "/login/")
            page.fill("#id_username", admin.username)
            page.fill("#id_password", PASSWORD)
            page.click("#login-submit")

            # the admin lands on the fleet
            page.wait_for_selector("#fleet-gpus")
            self.drawn(page, "fleet-charts", 2)
            assert page.locator("#fleet-gpus tr[data-gpu]").count() == 3
            assert "60.0 GB / 80.0 GB" in page.inner_text("#fleet-gpus tr[data-gpu='1']")
            assert page.locator("#fleet-failures [data-failure]").count() == 2
            page.screenshot(path=str(self.artifacts / f"fleet-dashboard-{language}.png"), full_page=True)

            # a deployment's serving charts, from the console's samples (the card says so)
            page.goto(f"{self.live_server_url}/deployments/{ids['deployment']}/")
            self.drawn(page, "deployment-charts", 4)
            assert page.get_attribute("#deployment-charts", "data-source") == "console"
            source = page.inner_text("#deployment-charts [data-source]")
            assert source == ("the console's own samples" if language == "en" else source) and source != "…"
            page.locator("#deployment-charts").scroll_into_view_if_needed()
            page.locator("#deployment-charts").screenshot(
                path=str(self.artifacts / f"deployment-charts-{language}.png")
            )

            # a host's GPUs; the 1-hour button redraws from the endpoint
            page.goto(f"{self.live_server_url}/inventory/hosts/{ids['host']}/")
            self.drawn(page, "host-gpu-charts", 4)
            page.click("#host-gpu-charts [data-window-choice='1h']")
            page.wait_for_selector("#host-gpu-charts[data-window='1h'][data-state='ready']", state="attached")
            self.drawn(page, "host-gpu-charts", 4)
            assert page.get_attribute("#host-gpu-charts [data-window-choice='1h']", "aria-pressed") == "true"
            page.screenshot(path=str(self.artifacts / f"host-gpu-charts-{language}.png"), full_page=True)
            assert not errors, (language, errors)
            context.close()
