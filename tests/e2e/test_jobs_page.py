"""In a real browser against a real daphne: the Jobs page lists jobs, filters them, and a job's page shows its
log, the backlog first and then lines as they are published."""

from __future__ import annotations

import pytest

from tests.e2e.live import ConsoleLiveServerTestCase
from tests.factories import PASSWORD, DeploymentFactory, JobFactory, ModelArtifactFactory, UserFactory

pytestmark = pytest.mark.browser


class JobsPageTests(ConsoleLiveServerTestCase):
    serve_static = True

    @pytest.fixture(autouse=True)
    def _browser(self, browser, artifacts):
        self.browser = browser
        self.artifacts = artifacts

    def test_filter_the_jobs_then_follow_one_jobs_log_live(self):
        from console.streams import publish
        from deployments.models import Job, JobLogLine

        artifact = ModelArtifactFactory(repo__repo_id="acme/e2e-jobs")
        download = JobFactory(target=artifact, status=Job.Status.RUNNING, log_seq=1)
        JobLogLine.objects.create(job=download, seq=1, text="attempt 1 of 3 on e2e")
        serve = JobFactory(kind=Job.Kind.SERVE, target=DeploymentFactory(name="e2e-chat"), status=Job.Status.FAILED)
        engineer = UserFactory(username="engineer-jobs", roles=["engineer"])

        context = self.browser.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        page.goto(self.live_server_url + "/login/")
        page.fill("#id_username", engineer.username)
        page.fill("#id_password", PASSWORD)
        page.click("#login-submit")
        page.click("[data-nav='jobs']")
        page.wait_for_selector("#jobs-table")
        assert page.locator(f"tr[data-job='{serve.pk}']").is_visible()
        assert page.locator(f"tr[data-job='{download.pk}']").is_visible()

        page.select_option("#id_kind", "download")
        page.click("#job-filter-submit")
        page.wait_for_selector("#job-filters-clear")
        assert page.locator("#jobs-table tbody tr[data-job]").count() == 1
        assert page.locator(f"tr[data-job='{serve.pk}']").count() == 0
        page.screenshot(path=str(self.artifacts / "jobs-list-filtered.png"), full_page=True)

        page.click(f"tr[data-job='{download.pk}'] a[href='/jobs/{download.pk}/']")
        page.wait_for_selector("#job-log >> text=attempt 1 of 3 on e2e", timeout=10_000)  # the backlog
        page.wait_for_selector("#job-stream-state >> text=live", timeout=10_000)
        line = JobLogLine.objects.create(job=download, seq=2, text="fetching model.safetensors")
        publish(download.stream, [line.as_item()], wait=5)
        page.wait_for_selector("#job-log >> text=fetching model.safetensors", timeout=10_000)  # live
        assert "acme/e2e-jobs" in page.locator("#job-facts").inner_text()
        page.screenshot(path=str(self.artifacts / "job-detail-live.png"), full_page=True)
        context.close()
