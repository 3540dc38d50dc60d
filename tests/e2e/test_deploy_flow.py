"""In a real browser, as an admin: the planner refuses an oversized spec, a tiny model is deployed through the
form (a real agent worker starts serve.py with the process runtime), its logs arrive live, a reload loses no
line, the playground chats with it, and it is stopped. Screenshots go to test-artifacts/screenshots/."""

from __future__ import annotations

import pytest

from deployments.models import Deployment, Gpu, Host, JobLogLine, ModelArtifact, ModelRepo, ModelSource
from tests.conftest import need
from tests.e2e.live import ConsoleLiveServerTestCase
from tests.factories import PASSWORD, UserFactory
from tests.support.agent import Agent
from tests.support.deploy_fixtures import tiny_model_in_store
from tests.support.model_dirs import write_llama_dir
from tests.support.serve_process import ml_python

pytestmark = pytest.mark.browser
HOST = "browser-node"


def _server_lines(page) -> int:
    return page.locator("#server-log [data-seq]").count()


class DeployFlow(ConsoleLiveServerTestCase):
    serve_static = True

    @pytest.fixture(autouse=True)
    def _fixtures(self, browser, artifacts, tmp_path, redis_url):
        self.browser, self.artifacts, self.tmp_path, self.redis_url = browser, artifacts, tmp_path, redis_url

    def _artifact(self, host: Host, repo_id: str, path) -> ModelArtifact:
        source = ModelSource.objects.get_or_create(name="browser-hub", defaults={"kind": ModelSource.Kind.HUB})[0]
        repo = ModelRepo.objects.create(source=source, repo_id=repo_id, commit="e" * 40)
        return ModelArtifact.objects.create(repo=repo, host=host, status=ModelArtifact.Status.READY, path=str(path))

    def test_deploy_watch_chat_stop(self):
        need(ml_python() is not None, "the ML environment (make ml-env) runs serve.py")
        host = Host.objects.create(name=HOST, runtime=Host.Runtime.PROCESS, status=Host.Status.ONLINE)
        Gpu.objects.create(host=host, index=0, name="Test GPU", memory_total=2 * 10**9, health=Gpu.Health.OK)
        big = self._artifact(host, "org/llama-7b", write_llama_dir(self.tmp_path / "7b", "7b"))
        tiny = self._artifact(host, "tests/tiny-llama", tiny_model_in_store())
        admin = UserFactory(username="browser-admin", roles=["admin"])
        agent = Agent(self.redis_url, HOST)
        errors: list[str] = []
        context = self.browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        try:
            page.goto(self.live_server_url + "/login/")
            page.fill("#id_username", admin.username)
            page.fill("#id_password", PASSWORD)
            page.click("#login-submit")
            page.goto(self.live_server_url + "/deployments/")
            page.click("#deploy-model-empty")

            # The planner refuses a 7B model on a 2 GB GPU, with its reason, before anything runs.
            page.select_option("#id_artifact", str(big.pk))
            page.wait_for_selector("#plan-status[data-fits='no']", timeout=15_000)
            assert "GB" in page.inner_text("#plan-panel")
            page.screenshot(path=str(self.artifacts / "deploy-refused.png"), full_page=True)

            page.select_option("#id_artifact", str(tiny.pk))
            page.fill("#id_name", "browser-tiny")
            page.fill("#id_max_total_tokens", "256")
            page.fill("#id_max_input_tokens", "200")
            page.wait_for_selector("#plan-status[data-fits='yes']", timeout=15_000)
            page.click("#review-button")
            page.wait_for_selector("#confirm-deploy")
            assert "text-generation-launcher" in page.inner_text("body")
            page.screenshot(path=str(self.artifacts / "deploy-review.png"), full_page=True)
            page.click("#confirm-deploy")
            assert not Deployment.objects.filter(name="huge").exists()

            # Live logs, then running.
            page.wait_for_selector("#launch-log >> text=starting", timeout=30_000)
            page.wait_for_selector("#server-log >> text=Connected", timeout=120_000)
            page.wait_for_selector("#state-badge [data-state='running']", timeout=60_000)
            # The job's own "running:" line arrives while the job keeps watching (it used to wait for the stop).
            page.wait_for_selector("#launch-log >> text=answers /health and /info", timeout=5_000)
            page.screenshot(path=str(self.artifacts / "deploy-running.png"), full_page=True)
            deployment = Deployment.objects.get(name="browser-tiny")
            stored = JobLogLine.objects.filter(job_id=deployment.job_id, stream="server").count()
            page.wait_for_function(
                f"document.querySelectorAll('#server-log [data-seq]').length >= {stored}", timeout=15_000
            )

            # A reload shows every line again (backfilled from the database), none twice.
            page.reload()
            stored = JobLogLine.objects.filter(job_id=deployment.job_id, stream="server").count()
            page.wait_for_function(
                f"document.querySelectorAll('#server-log [data-seq]').length >= {stored}", timeout=15_000
            )
            seqs = page.eval_on_selector_all("#server-log [data-seq]", "nodes => nodes.map(n => n.dataset.seq)")
            assert len(seqs) == len(set(seqs)) >= stored

            # Chat in the playground.
            page.click("#playground-link")
            page.click("#tab-chat")
            page.fill("#chat-message", "Hello, who are you?")
            page.click("#send")
            page.wait_for_selector("#stats[data-tokens]:not([data-tokens='0'])", timeout=60_000)
            assert page.locator("#chat-transcript [data-role='assistant']").count() == 1
            page.screenshot(path=str(self.artifacts / "deploy-playground.png"), full_page=True)

            # Stop, confirmed in the modal.
            page.goto(f"{self.live_server_url}/deployments/{deployment.pk}/")
            page.click("#stop-form button")
            page.click("#confirm-modal-ok")
            page.wait_for_selector("#state-badge [data-state='stopped']", timeout=60_000)
            page.screenshot(path=str(self.artifacts / "deploy-stopped.png"), full_page=True)
            assert not errors, errors
        finally:
            context.close()
            agent.stop()
