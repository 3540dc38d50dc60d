"""In a real browser: a bad value on the deploy form is named at the top of the page with a link that focuses the
field, the planner panel names the fields at fault instead of "The planner could not answer", the device starts at
CPU on a machine without a GPU, and the import form says which directories are allowed before anything is tried.
Screenshots go to test-artifacts/screenshots/."""

from __future__ import annotations

import os

import pytest
from django.conf import settings

from deployments.models import Host, ModelArtifact, ModelRepo, ModelSource
from tests.e2e.live import ConsoleLiveServerTestCase
from tests.factories import PASSWORD, UserFactory
from tests.support.model_dirs import write_llama_dir

pytestmark = pytest.mark.browser


class FormErrors(ConsoleLiveServerTestCase):
    serve_static = True

    @pytest.fixture(autouse=True)
    def _fixtures(self, browser, artifacts, tmp_path):
        self.browser, self.artifacts, self.tmp_path = browser, artifacts, tmp_path

    def _page(self):
        admin = UserFactory(username="errors-admin", roles=["admin"])
        context = self.browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.goto(self.live_server_url + "/login/")
        page.fill("#id_username", admin.username)
        page.fill("#id_password", PASSWORD)
        page.click("#login-submit")
        return context, page

    def test_deploy_form_errors_are_summarised_and_linked(self):
        host = Host.objects.create(name="laptop", runtime=Host.Runtime.PROCESS, status=Host.Status.ONLINE)  # no GPU
        source = ModelSource.objects.create(name="errors-hub", kind=ModelSource.Kind.HUB)
        repo = ModelRepo.objects.create(source=source, repo_id="org/tiny-llama", commit="f" * 40)
        tiny = ModelArtifact.objects.create(
            repo=repo, host=host, status="ready", path=str(write_llama_dir(self.tmp_path / "tiny", "tiny"))
        )
        context, page = self._page()
        try:
            page.goto(self.live_server_url + f"/deployments/new/?artifact={tiny.pk}")
            assert page.input_value("#id_device") == "cpu"  # no GPU anywhere: CPU from the start
            page.wait_for_selector("#plan-status[data-fits='yes']", timeout=15_000)
            assert page.inner_text("[data-plan='device']") == "CPU"  # and the planner agrees

            # The planner answers 400 with field errors: the panel names the fields, with links.
            page.fill("#id_name", "tiny-cpu")
            page.fill("#id_max_input_tokens", "300")
            page.fill("#id_max_total_tokens", "256")
            page.wait_for_selector("#plan-error [data-plan-error-field='max_input_tokens']", timeout=15_000)
            panel = page.inner_text("#plan-panel")
            assert "The planner could not answer" not in panel
            assert "Correct these fields" in panel and "Max input tokens" in panel

            # Invalid JSON is checked in the page with the server's wording.
            page.fill("#id_extra_env", "{oops")
            page.wait_for_selector("#plan-error [data-plan-error-field='extra_env']", timeout=15_000)
            assert "Not valid JSON: " in page.inner_text("[data-plan-error='extra_env']")

            # Review: the server refuses; the summary is at the top, in view, and its link focuses the field.
            page.click("#review-button")
            page.wait_for_selector("#error-summary")
            box = page.locator("#error-summary").bounding_box()
            assert box is not None and box["y"] < 800  # seen without scrolling
            assert "Extra environment (JSON)" in page.inner_text("#error-summary")
            page.screenshot(path=str(self.artifacts / "deploy-error-summary.png"), full_page=False)
            page.click("#error-summary a[data-error-link='extra_env']")
            assert page.evaluate("document.activeElement.id") == "id_extra_env"
            assert self.errors == []
        finally:
            context.close()

    def test_the_import_form_names_the_allowed_roots(self):
        Host.objects.create(name="import-host", runtime=Host.Runtime.PROCESS, status=Host.Status.ONLINE)
        roots = [os.path.realpath(str(root)) for root in (settings.MODEL_IMPORT_ROOTS or [settings.MODEL_STORE])]
        context, page = self._page()
        try:
            page.goto(self.live_server_url + "/models/import/")
            help_text = page.inner_text("#model-import-form")
            assert all(root in help_text for root in roots) and "MODEL_IMPORT_ROOTS" in help_text
            page.select_option("#id_host", label="import-host")
            page.fill("#id_directory", "/etc")
            page.click("#model-import-form button[type=submit]")
            page.wait_for_selector("#error-summary")
            page.screenshot(path=str(self.artifacts / "import-roots.png"), full_page=True)
            page.click("#error-summary a[data-error-link='directory']")
            assert page.evaluate("document.activeElement.id") == "id_directory"
            assert self.errors == []
        finally:
            context.close()
