"""In a real browser: the deployment page's Benchmarks card draws the trend of the deployment's runs (a uPlot per
chart, a point per succeeded run), shows a scheduled run's drop alert until it is acknowledged, and deletes a
schedule only after the confirmation modal."""

from __future__ import annotations

import pytest

from tests.e2e.live import ConsoleLiveServerTestCase
from tests.factories import PASSWORD, DeploymentSpecFactory, HostFactory, UserFactory

pytestmark = pytest.mark.browser
WORKLOAD = {"prompt_tokens": 32, "output_tokens": 16, "sweep": "concurrency", "levels": [1, 4], "duration_s": 5}


def _finished_run(schedule, tokens: float):
    from deployments.benchmarks import services
    from deployments.models import BenchmarkRun, Job

    run = BenchmarkRun.objects.create(
        deployment=schedule.deployment,
        spec=schedule.deployment.spec,
        created_by=schedule.created_by,
        workload=schedule.workload,
        schedule=schedule,
    )
    for index, (level, share) in enumerate(((1, 0.3), (4, 1.0))):
        services.step_recorded(
            run,
            {"step": index, "concurrency": level, "output_tokens_per_s": tokens * share, "ttft_ms_p99": 40.0 * level,
             "e2e_ms_p99": 500.0 * level, "requests": 40},
        )  # fmt: skip
    return services.benchmark_finished(run, status=Job.Status.SUCCEEDED)


class BenchmarkTrendCardTests(ConsoleLiveServerTestCase):
    serve_static = True

    @pytest.fixture(autouse=True)
    def _browser(self, browser, artifacts):
        self.browser = browser
        self.artifacts = artifacts

    def test_trend_alert_and_schedule_on_the_deployment_page(self):
        from deployments.benchmarks import schedules
        from deployments.models import BenchmarkAlert, BenchmarkSchedule, Deployment

        engineer = UserFactory(username="engineer-trend", roles=["engineer", "admin"])
        spec = DeploymentSpecFactory(current=True, deployment__name="trend-target")
        deployment = spec.deployment
        deployment.state, deployment.host = Deployment.State.RUNNING, HostFactory(name="trend-host")
        deployment.save(update_fields=["state", "host"])
        schedule = schedules.schedule_create(
            actor=engineer, deployment=deployment, workload=WORKLOAD, interval_hours=24, drop_percent=10
        )
        for tokens in (100.0, 102.0, 70.0):
            _finished_run(schedule, tokens)
        alert = BenchmarkAlert.objects.get()

        context = self.browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(self.live_server_url + "/login/")
        page.fill("#id_username", engineer.username)
        page.fill("#id_password", PASSWORD)
        page.click("#login-submit")
        page.goto(f"{self.live_server_url}/deployments/{deployment.pk}/")

        page.wait_for_selector("#bench-trend [data-chart][data-points='3']", state="attached", timeout=10_000)
        assert page.locator("#bench-trend [data-chart][data-points='3']").count() == 2
        assert page.locator("#bench-trend canvas").count() >= 2
        assert "output tokens/s" in page.inner_text("#bench-alerts") and "-30.7" in page.inner_text("#bench-alerts")
        page.screenshot(path=str(self.artifacts / "deployment-benchmarks-card.png"), full_page=True)

        page.click(f"[data-acknowledge='{alert.pk}']")
        page.wait_for_selector("#benchmarks", timeout=10_000)
        assert page.locator("#bench-alerts").count() == 0
        alert.refresh_from_db()
        assert alert.acknowledged_by_id == engineer.pk

        page.click(f"[data-delete-schedule='{schedule.pk}']")
        page.wait_for_selector("#confirm-modal.show", timeout=10_000)
        assert BenchmarkSchedule.objects.filter(pk=schedule.pk).exists()  # nothing before the confirmation
        page.click("#confirm-modal-ok")
        page.wait_for_selector("#bench-schedules-none", timeout=10_000)
        assert not BenchmarkSchedule.objects.exists() and errors == []
        context.close()
