"""In a real browser against a real daphne (HTTP + websockets): each role logs in and sees its menu."""

from __future__ import annotations

import re

import pytest
from django.core.management import call_command

from tests.e2e.live import ConsoleLiveServerTestCase
from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.browser

EXPECTED_NAV = {
    "admin": [
        "dashboard",
        "fleet",
        "inventory",
        "models",
        "deployments",
        "approvals",
        "keys",
        "inference",
        "jobs",
        "datasets",
        "finetune",
        "quality",
        "benchmarks",
        "usage",
        "health",
        "credentials",
        "audit",
        "access",
        "teams",
        "api",
    ],
    "engineer": [
        "dashboard",
        "fleet",
        "inventory",
        "models",
        "deployments",
        "approvals",
        "jobs",
        "datasets",
        "finetune",
        "quality",
        "benchmarks",
        "usage",
        "health",
        "credentials",
        "api",
    ],
    "auditor": [
        "dashboard",
        "fleet",
        "inventory",
        "models",
        "deployments",
        "approvals",
        "inference",
        "jobs",
        "datasets",
        "benchmarks",
        "usage",
        "health",
        "credentials",
        "audit",
        "api",
    ],
}


@pytest.mark.usefixtures("celery_worker_process")
class NavigationTests(ConsoleLiveServerTestCase):
    serve_static = True

    @pytest.fixture(autouse=True)
    def _browser(self, browser, artifacts, tmp_path):
        self.browser = browser
        self.artifacts = artifacts
        self.tmp_path = tmp_path

    def login(self, username: str, password: str):
        context = self.browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        page.goto(self.live_server_url + "/")
        assert "/login/" in page.url
        page.fill("#id_username", username)
        page.fill("#id_password", password)
        page.click("#login-submit")
        page.wait_for_load_state()
        if not page.locator("#my-actions").count():
            page.screenshot(path=str(self.artifacts / f"login-failed-{username}.png"))
            raise AssertionError(
                f"login as {username} did not reach the dashboard: {page.url}\n{page.content()[:3000]}"
            )
        return context, page

    def nav_keys(self, page) -> list[str]:
        return page.eval_on_selector_all("#nav-items [data-nav]", "els => els.map(e => e.dataset.nav)")

    def test_first_admin_logs_in_with_the_password_from_the_file(self):
        password_file = self.tmp_path / "initial_admin_password"
        call_command("ensure_admin", "--password-file", str(password_file))
        assert oct(password_file.stat().st_mode & 0o777) == "0o600"
        creds = dict(line.split(": ", 1) for line in password_file.read_text().splitlines())
        context, page = self.login(creds["username"], creds["password"])
        assert self.nav_keys(page) == EXPECTED_NAV["admin"]
        # The live indicator turns green only after a pong came back through the Redis channel layer.
        page.wait_for_selector("#live-status .live-dot.ok", timeout=15_000)
        page.wait_for_selector("#worker-status.text-success", timeout=15_000)
        page.screenshot(path=str(self.artifacts / "dashboard-admin.png"), full_page=True)
        context.close()

    def test_each_role_sees_only_what_it_may_use(self):
        for role, expected in EXPECTED_NAV.items():
            user = UserFactory(username=f"{role}-e2e", roles=[role])
            context, page = self.login(user.username, PASSWORD)
            assert self.nav_keys(page) == expected, role
            page.screenshot(path=str(self.artifacts / f"dashboard-{role}.png"), full_page=True)
            if "access" not in expected:
                response = page.goto(self.live_server_url + "/users/")
                assert response.status == 403
                assert page.locator("#forbidden").is_visible()
            context.close()

    def test_language_switch_to_chinese(self):
        user = UserFactory(username="engineer-zh", roles=["engineer"])
        context, page = self.login(user.username, PASSWORD)
        page.select_option("#language-select", "zh-hans")
        page.wait_for_selector("html[lang='zh-hans']")
        assert page.locator("[data-nav='dashboard']").inner_text() == "仪表盘"
        page.screenshot(path=str(self.artifacts / "dashboard-engineer-zh.png"), full_page=True)
        context.close()

    def test_wrong_password_then_logout(self):
        user = UserFactory(username="auditor-out", roles=["auditor"])
        context = self.browser.new_context()
        page = context.new_page()
        page.goto(self.live_server_url + "/login/")
        page.fill("#id_username", user.username)
        page.fill("#id_password", "not-the-password")
        page.click("#login-submit")
        assert page.locator("#login-error").is_visible()
        context.close()
        context, page = self.login(user.username, PASSWORD)
        page.click("#user-menu")
        page.click("#logout")
        page.wait_for_url(re.compile(r".*/login/$"))
        context.close()


class AuditPageTests(ConsoleLiveServerTestCase):
    serve_static = True

    @pytest.fixture(autouse=True)
    def _browser(self, browser, artifacts):
        self.browser = browser
        self.artifacts = artifacts

    def test_new_events_appear_live_and_rows_expand_to_their_diff(self):
        import audit

        auditor = UserFactory(username="auditor-live", roles=["auditor"])
        context = self.browser.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        page.goto(self.live_server_url + "/login/")
        page.fill("#id_username", auditor.username)
        page.fill("#id_password", PASSWORD)
        page.click("#login-submit")
        page.goto(self.live_server_url + "/audit/")
        assert page.locator("#audit-verification [data-ok='1']").is_visible()
        page.wait_for_timeout(500)  # let the page subscribe
        event = audit.record(
            action="deployment.start",
            actor=auditor,
            target_type="deployments.deployment",
            target_id="7",
            target_name="deepseek-7b <b>chat</b>",
            changes={"status": ["stopped", "starting"]},
        )
        row = page.locator(f"#audit-events details[data-seq='{event.id}']")
        row.wait_for(timeout=10_000)
        assert "deepseek-7b <b>chat</b>" in row.inner_text()  # shown as text, never as markup
        row.locator("summary").click()
        assert "starting" in row.inner_text()
        page.screenshot(path=str(self.artifacts / "audit-live.png"), full_page=True)
        context.close()


class ModelPageTests(ConsoleLiveServerTestCase):
    serve_static = True

    @pytest.fixture(autouse=True)
    def _browser(self, browser, artifacts):
        self.browser = browser
        self.artifacts = artifacts

    def test_download_progress_and_log_arrive_live(self):
        from console.streams import publish
        from deployments.models import Host, Job, JobLogLine, ModelArtifact, ModelRepo, ModelSource

        host = Host.objects.create(name="e2e-node", status="online")
        source = ModelSource.objects.get_or_create(name="Hub e2e", defaults={"kind": "hub"})[0]
        repo = ModelRepo.objects.create(source=source, repo_id="acme/live", commit="c" * 40, total_size=10**9)
        artifact = ModelArtifact.objects.create(repo=repo, host=host, status="downloading", bytes_total=10**9)
        job = Job.objects.create(
            kind="download",
            status="running",
            target_type="deployments.modelartifact",
            target_id=str(artifact.pk),
            queue=host.queue,
            log_seq=1,
        )
        JobLogLine.objects.create(job=job, seq=1, text="attempt 1 of 3 on e2e")
        engineer = UserFactory(username="engineer-models", roles=["engineer"])
        context = self.browser.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        page.goto(self.live_server_url + "/login/")
        page.fill("#id_username", engineer.username)
        page.fill("#id_password", PASSWORD)
        page.click("#login-submit")
        page.goto(self.live_server_url + f"/models/{artifact.pk}/")
        page.wait_for_selector("#job-log >> text=attempt 1 of 3 on e2e", timeout=10_000)  # the backlog
        page.wait_for_timeout(500)
        line = JobLogLine.objects.create(
            job=job,
            seq=2,
            stream="progress",
            data={
                "done": 6 * 10**8,
                "total": 10**9,
                "rate_bps": 5 * 10**7,
                "eta_s": 8,
                "file": "model.safetensors",
                "file_done": 6 * 10**8,
                "file_total": 10**9,
            },
        )
        publish(job.stream, [line.as_item()], wait=5)
        page.wait_for_selector("[data-progress='bar'] >> text=60%", timeout=10_000)
        page.screenshot(path=str(self.artifacts / "model-download-live.png"), full_page=True)
        context.close()
