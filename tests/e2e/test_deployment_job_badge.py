"""In a real browser (issue 20, defect 4): the job badge next to a deployment's logs follows its job live, from
pending to running to its outcome, while the deployment's own state stays put, without a reload: from the job's
own stream (which says when the job is claimed and how it ended), and from the page's poll of the API. The job's
status is changed the way the runner changes it."""

from __future__ import annotations

import pytest

from deployments.jobs.services import job_create
from deployments.models import Deployment, Job
from tests.e2e.live import ConsoleLiveServerTestCase
from tests.factories import PASSWORD, DeploymentFactory, UserFactory
from tests.factories.accounts import TeamFactory

pytestmark = pytest.mark.browser
State = Deployment.State


class DeploymentJobBadge(ConsoleLiveServerTestCase):
    serve_static = True

    @pytest.fixture(autouse=True)
    def _fixtures(self, browser, artifacts):
        self.browser, self.artifacts = browser, artifacts

    def test_the_job_badge_follows_the_jobs_stream_alone(self):
        admin = UserFactory(username="badge-admin", roles=["admin"])
        self._watch(admin, DeploymentFactory(name="badge", state=State.STARTING), poll=False)

    def test_the_job_badge_follows_the_job_for_an_engineer_of_the_team(self):
        team = TeamFactory(name="badge-team")
        engineer = UserFactory(username="badge-engineer", roles=["engineer"])
        engineer.groups.add(team)
        self._watch(engineer, DeploymentFactory(name="badge-team-dep", state=State.STARTING, team=team))

    def _watch(self, user, deployment, *, poll: bool = True):
        job = job_create(kind=Job.Kind.SERVE, actor=None, target=deployment, params={"deployment": deployment.pk})
        Deployment.objects.filter(pk=deployment.pk).update(job=job)
        context = self.browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        try:
            page.goto(self.live_server_url + "/login/")
            page.fill("#id_username", user.username)
            page.fill("#id_password", PASSWORD)
            page.click("#login-submit")
            if not poll:  # the deployment API never answers: only the job's stream can tell the page
                page.route(f"**/api/v1/deployments/{deployment.pk}/", lambda route: route.abort())
            page.goto(f"{self.live_server_url}/deployments/{deployment.pk}/")
            page.wait_for_selector("#log-stream-state:has-text('live')", timeout=10_000)
            badge = page.locator("[data-job-status]")
            assert badge.get_attribute("data-job-status") == "pending"
            page.evaluate("window.__samePage = true")  # gone if the page reloads

            Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING)  # picked up by a worker
            page.wait_for_selector("[data-job-status='running'].text-bg-primary", timeout=10_000)
            assert badge.inner_text().strip() == "running"

            Job.objects.filter(pk=job.pk).update(status=Job.Status.FAILED)  # it ends; the state is not touched
            page.wait_for_selector("[data-job-status='failed'].text-bg-danger", timeout=10_000)
            assert badge.inner_text().strip() == "failed"
            assert page.locator("#state-badge [data-state]").get_attribute("data-state") == "starting"
            assert page.evaluate("window.__samePage === true")
            page.screenshot(path=str(self.artifacts / f"deployment-job-badge-{deployment.name}.png"), full_page=True)
            page.wait_for_selector("#log-stream-state:has-text('ended')", timeout=10_000)  # the stream is over
            assert not errors, errors
        finally:
            context.close()
