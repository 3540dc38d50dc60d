"""In a real browser (issue 13 items 9 and 10): the deployment page offers only what the state allows, and after a
stop the job's badge says "cancelled" and the buttons change without a reload. The state changes are made the way
the serve job makes them, so the page learns them only through its polling."""

from __future__ import annotations

import pytest
from django.utils import timezone

from deployments.jobs.services import job_create
from deployments.models import Deployment, Job
from tests.e2e.live import ConsoleLiveServerTestCase
from tests.factories import PASSWORD, DeploymentFactory, UserFactory

pytestmark = pytest.mark.browser
State = Deployment.State


def _visible(page, action: str) -> bool:
    return page.locator(f"#{action}-form").is_visible()


class DeploymentActions(ConsoleLiveServerTestCase):
    serve_static = True

    @pytest.fixture(autouse=True)
    def _fixtures(self, browser, artifacts):
        self.browser, self.artifacts = browser, artifacts

    def test_buttons_follow_the_state_and_a_stop_shows_cancelled_without_a_reload(self):
        admin = UserFactory(username="actions-admin", roles=["admin"])
        deployment = DeploymentFactory(name="actions", state=State.RUNNING)
        job = job_create(kind=Job.Kind.SERVE, actor=None, target=deployment, params={"deployment": deployment.pk})
        Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING)
        Deployment.objects.filter(pk=deployment.pk).update(job=job)
        context = self.browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        try:
            page.goto(self.live_server_url + "/login/")
            page.fill("#id_username", admin.username)
            page.fill("#id_password", PASSWORD)
            page.click("#login-submit")
            page.goto(f"{self.live_server_url}/deployments/{deployment.pk}/")
            assert [a for a in ("launch", "restart", "stop", "delete") if _visible(page, a)] == ["restart", "stop"]
            assert page.locator("[data-job-status]").get_attribute("data-job-status") == "running"
            assert page.locator("#job-link").get_attribute("href") == f"/jobs/{job.pk}/"  # the job's own page

            # The stop completes behind the page: the job is cancelled, the deployment stopped.
            Job.objects.filter(pk=job.pk).update(status=Job.Status.CANCELLED)
            Deployment.objects.filter(pk=deployment.pk).update(state=State.STOPPED)
            page.wait_for_selector("[data-job-status='cancelled']", timeout=10_000)
            page.wait_for_selector("#state-badge [data-state='stopped']", timeout=10_000)
            assert [a for a in ("launch", "restart", "stop", "delete") if _visible(page, a)] == ["launch", "delete"]
            page.screenshot(path=str(self.artifacts / "deployment-stopped-actions.png"), full_page=True)

            # Failed: Launch and Delete only (it used to offer Launch, Restart and Stop at once); with an automatic
            # restart due, Stop too (it cancels that restart).
            Deployment.objects.filter(pk=deployment.pk).update(state=State.FAILED, failure_cause="crashed")
            page.wait_for_selector("#state-badge [data-state='failed']", timeout=10_000)
            assert [a for a in ("launch", "restart", "stop", "delete") if _visible(page, a)] == ["launch", "delete"]
            Deployment.objects.filter(pk=deployment.pk).update(next_restart_at=timezone.now())
            page.wait_for_selector("#stop-form:not([hidden])", timeout=10_000)
            assert [a for a in ("launch", "restart", "stop", "delete") if _visible(page, a)] == [
                "launch",
                "stop",
                "delete",
            ]
            page.screenshot(path=str(self.artifacts / "deployment-failed-actions.png"), full_page=True)
            assert not errors, errors
        finally:
            context.close()
