"""In a real Chromium against a real daphne: an admin runs the health check from its page, the report page follows
the run live (it reloads itself until the run is done) and then shows the corrupt model as a critical finding with
its next step and a re-download button, which starts the restore job. No page logs an error. Screenshot in
test-artifacts/screenshots/health-check.png."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from django.conf import settings

from deployments.models import Job
from deployments.monitoring.models import HealthCheckRun
from tests.e2e.live import ConsoleLiveServerTestCase
from tests.factories import PASSWORD, DeploymentFactory, DeploymentSpecFactory, HostFactory, UserFactory
from tests.factories.registry import ModelArtifactFactory
from workers import runner

pytestmark = pytest.mark.browser


class HealthCheckPageTests(ConsoleLiveServerTestCase):
    serve_static = True

    @pytest.fixture(autouse=True)
    def _browser(self, browser, artifacts, tmp_path):
        self.browser, self.artifacts, self.tmp_path = browser, artifacts, tmp_path

    def test_run_now_follows_the_run_live_and_offers_the_redownload(self):
        settings.INTEGRITY_SWEEP_MB_S, settings.BACKUP_DIR = 0, ""
        admin = UserFactory(username="admin-health", roles=["admin"])
        host = HostFactory(name="gpu-node-1", model_store=str(self.tmp_path))
        artifact = ModelArtifactFactory(host=host, repo__repo_id="acme/tiny")
        root = Path(artifact.path)
        root.mkdir(parents=True)
        (root / "config.json").write_bytes(b"{}")
        (root / "model.safetensors").write_bytes(b"weights, one byte flipped")
        artifact.files_sha256 = {
            "config.json": hashlib.sha256(b"{}").hexdigest(),
            "model.safetensors": hashlib.sha256(b"weights as downloaded").hexdigest(),
        }
        artifact.save()
        DeploymentSpecFactory(deployment=DeploymentFactory(name="chat", state="running", host=host), artifact=artifact,
                              current=True)  # fmt: skip

        context = self.browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(self.live_server_url + "/login/")
        page.fill("#id_username", admin.username)
        page.fill("#id_password", PASSWORD)
        page.click("#login-submit")
        page.goto(self.live_server_url + "/health/")
        page.click("#health-run-now")
        page.wait_for_selector('#health-live[data-live="1"]')
        run = HealthCheckRun.objects.get()
        assert page.url == f"{self.live_server_url}/health/{run.pk}/"

        assert runner.run(run.job_id) == "succeeded"  # the console's worker, then the host's agent
        run.refresh_from_db()
        for job_id in run.progress["jobs"]:
            assert runner.run(job_id) == "succeeded"
        page.wait_for_selector('#health-live[data-live="0"]', timeout=20_000)  # the page reloaded by itself
        assert page.inner_text("#health-state") == "done"
        finding = page.locator('#health-findings tr[data-severity="critical"][data-check="integrity"]')
        assert "model.safetensors" in finding.inner_text() and "Re-download" in finding.inner_text()
        assert "model.safetensors" in page.inner_text("#health-corrupt")
        page.screenshot(path=str(self.artifacts / "health-check.png"), full_page=True)

        page.click(f'button[data-restore="{artifact.pk}"]')
        page.wait_for_url("**/jobs/*/")
        job = Job.objects.get(
            kind="integrity_sweep", target_type="deployments.modelartifact", target_id=str(artifact.pk)
        )
        assert page.url.endswith(f"/jobs/{job.pk}/") and job.params["restore"] == "redownload"
        assert errors == []
        context.close()
