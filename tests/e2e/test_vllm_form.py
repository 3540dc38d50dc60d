"""In a real browser: the deploy form's backend choice. Choosing vLLM hides TGI's limits and the quantization
values vLLM lacks and shows vLLM's own fields; the live command becomes `vllm serve ...` and follows vLLM's fields;
values left in TGI's fields do not stop the review; going back to TGI shows its fields again. Screenshots go to
test-artifacts/screenshots/. Without the script, every field shows with its backend named."""

from __future__ import annotations

import pytest

from deployments.models import Deployment, Gpu, Host, ModelArtifact, ModelRepo, ModelSource
from tests.e2e.live import ConsoleLiveServerTestCase
from tests.factories import PASSWORD, UserFactory
from tests.support.model_dirs import write_llama_dir

pytestmark = pytest.mark.browser
TGI_ONLY = ("max_input_tokens", "max_total_tokens", "max_batch_prefill_tokens", "max_concurrent_requests")
VLLM_ONLY = ("gpu_memory_utilization", "max_model_len", "max_num_seqs", "max_num_batched_tokens")


class VllmForm(ConsoleLiveServerTestCase):
    serve_static = True

    @pytest.fixture(autouse=True)
    def _fixtures(self, browser, artifacts, tmp_path):
        self.browser, self.artifacts, self.tmp_path = browser, artifacts, tmp_path

    def _shown(self, page, name: str) -> bool:
        return page.is_visible(f"#id_{name}")

    def _command(self, page, contains: str) -> str:
        page.wait_for_function(
            "text => document.getElementById('plan-command').textContent.includes(text)", arg=contains, timeout=15_000
        )
        return page.inner_text("#plan-command")

    def test_toggling_the_backend_switches_the_fields_and_the_command(self):
        host = Host.objects.create(name="vllm-browser", runtime=Host.Runtime.PROCESS, status=Host.Status.ONLINE)
        Gpu.objects.create(host=host, index=0, name="L4", memory_total=24 * 10**9, health=Gpu.Health.OK)
        source = ModelSource.objects.create(name="vllm-hub", kind=ModelSource.Kind.HUB)
        repo = ModelRepo.objects.create(source=source, repo_id="org/tiny-llama", commit="a" * 40)
        tiny = ModelArtifact.objects.create(
            repo=repo, host=host, status="ready", path=str(write_llama_dir(self.tmp_path / "tiny", "tiny"))
        )
        admin = UserFactory(username="vllm-admin", roles=["admin"])
        context = self.browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        try:
            page.goto(self.live_server_url + "/login/")
            page.fill("#id_username", admin.username)
            page.fill("#id_password", PASSWORD)
            page.click("#login-submit")
            page.goto(self.live_server_url + f"/deployments/new/?artifact={tiny.pk}")

            # TGI first: its limits show, vLLM's do not.
            assert page.input_value("#id_backend") == "tgi"
            assert all(self._shown(page, name) for name in TGI_ONLY)
            assert not any(self._shown(page, name) for name in VLLM_ONLY)
            self._command(page, "text-generation-launcher ")

            # Values typed for TGI, one of them wrong for TGI (input >= total) and a quantization vLLM lacks.
            page.fill("#id_name", "tiny-vllm")
            page.fill("#id_max_input_tokens", "300")
            page.fill("#id_max_total_tokens", "256")
            page.select_option("#id_quantize", "eetq")
            page.wait_for_selector("#plan-error [data-plan-error-field='max_input_tokens']", timeout=15_000)

            page.select_option("#id_backend", "vllm")
            assert not any(self._shown(page, name) for name in TGI_ONLY)
            assert all(self._shown(page, name) for name in VLLM_ONLY)
            assert page.input_value("#id_quantize") == ""  # eetq is TGI's: back to none
            offered = page.eval_on_selector_all("#id_quantize option:not([hidden])", "els => els.map(e => e.value)")
            assert "eetq" not in offered and "awq" in offered
            # The planner gets the backend and vLLM's fields, not the leftovers: it fits and shows vLLM's command.
            page.wait_for_selector("#plan-status[data-fits='yes']", timeout=15_000)
            self._command(page, "vllm serve ")
            page.fill("#id_gpu_memory_utilization", "0.8")
            page.fill("#id_max_model_len", "512")
            command = self._command(page, "--max-model-len 512")
            assert "--gpu-memory-utilization 0.8" in command and "--max-total-tokens" not in command
            assert page.is_visible("#plan-details li")  # the planner's account of vLLM's share of the GPU
            assert page.is_visible("[data-plan-label='vllm']") and not page.is_visible("[data-plan-label='tgi']")
            page.screenshot(path=str(self.artifacts / "deploy-form-vllm.png"), full_page=True)

            # The review takes it as vLLM (the hidden TGI values are not posted) and the server keeps vLLM's fields.
            page.click("#review-button")
            page.wait_for_selector("#confirm-deploy")
            assert page.input_value("#id_backend") == "vllm" and self._shown(page, "max_model_len")
            assert not self._shown(page, "max_input_tokens")
            assert page.inner_text("#plan-command").startswith("vllm serve ")
            page.click("#confirm-deploy")
            page.wait_for_url("**/deployments/*/")
            spec = Deployment.objects.get(name="tiny-vllm").spec
            assert (spec.backend, spec.max_model_len, spec.gpu_memory_utilization) == ("vllm", 512, 0.8)
            assert spec.max_input_tokens is None and spec.quantize == ""

            # Editing it: back to TGI shows TGI's fields again and TGI's command.
            page.goto(self.live_server_url + f"/deployments/{spec.deployment_id}/edit/")
            assert page.input_value("#id_backend") == "vllm" and self._shown(page, "max_model_len")
            page.select_option("#id_backend", "tgi")
            assert all(self._shown(page, name) for name in TGI_ONLY)
            assert not any(self._shown(page, name) for name in VLLM_ONLY)
            self._command(page, "text-generation-launcher ")
            assert errors == []
        finally:
            context.close()

        # Without the script every backend's fields show, each saying whose it is; the server sorts them out.
        context = self.browser.new_context(viewport={"width": 1400, "height": 1000}, java_script_enabled=False)
        page = context.new_page()
        try:
            page.goto(self.live_server_url + "/login/")
            page.fill("#id_username", admin.username)
            page.fill("#id_password", PASSWORD)
            page.click("#login-submit")
            page.goto(self.live_server_url + f"/deployments/new/?artifact={tiny.pk}")
            assert all(self._shown(page, name) for name in (*TGI_ONLY, *VLLM_ONLY))
            assert "(vLLM)" in page.inner_text("[data-field='max_model_len']")
            assert "(Text Generation Inference)" in page.inner_text("[data-field='max_total_tokens']")
        finally:
            context.close()


class VllmPlannerPage(ConsoleLiveServerTestCase):
    """The VRAM planner page shares the deploy form's backend toggle (console/backend_fields.js)."""

    serve_static = True

    @pytest.fixture(autouse=True)
    def _fixtures(self, browser):
        self.browser = browser

    def test_choosing_vllm_shows_its_fields_and_hides_tgis_token_limits(self):
        admin = UserFactory(username="vllm-planner", roles=["admin"])
        context = self.browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        try:
            page.goto(self.live_server_url + "/login/")
            page.fill("#id_username", admin.username)
            page.fill("#id_password", PASSWORD)
            page.click("#login-submit")
            page.goto(self.live_server_url + "/inventory/sizing/")
            assert page.input_value("#id_backend") == "tgi"
            assert not any(page.is_visible(f"#id_{name}") for name in VLLM_ONLY)
            assert page.is_visible("#id_max_total_tokens")
            page.select_option("#id_backend", "vllm")
            assert all(page.is_visible(f"#id_{name}") for name in VLLM_ONLY)
            assert not page.is_visible("#id_max_total_tokens")
            assert page.is_disabled("#id_max_total_tokens")  # not sent
            page.select_option("#id_backend", "tgi")
            assert page.is_visible("#id_max_total_tokens") and not page.is_visible("#id_gpu_memory_utilization")
            assert errors == []
        finally:
            context.close()
