"""Screenshots of the pages issue 13 changed, in English and in Chinese, kept in test-artifacts/screenshots/ for
review (a person looks at them; the zh walk in tests/console/test_zh_walk.py is the check that fails). Each page
must load without a script error in both languages."""

from __future__ import annotations

import pytest
from django.conf import settings

from tests.e2e.live import ConsoleLiveServerTestCase
from tests.factories import PASSWORD, UserFactory
from tests.support.fuzz_seed import seed_objects

pytestmark = pytest.mark.browser
PAGES = {
    "dashboard": "/",
    "jobs": "/jobs/",
    "job": "/jobs/{jobs}/",
    "teams": "/teams/",
    "team": "/teams/{teams}/",
    "tokens": "/tokens/",
    "grants": "/grants/",
    "credentials": "/credentials/",
    "user": "/users/{users}/",
    "password": "/account/password/",
    "deployment": "/deployments/{deployments}/",
    "deploy-form": "/deployments/new/",
    "import": "/models/import/",
    "add-model": "/models/add/",
    "hosts": "/inventory/",
    "audit": "/audit/",
}
# Issue 22: every page of the menu (and the model pages an admin reaches from it) in Chinese, kept for review.
MAIN_PAGES = {
    "fleet": "/fleet/",
    "models": "/models/",
    "model": "/models/{models}/",
    "sources": "/models/sources/",
    "deployments": "/deployments/",
    "approvals": "/approvals/",
    "inference-keys": "/gateway/keys/",
    "inference-log": "/gateway/inference-log/",
    "datasets": "/datasets/",
    "finetunes": "/finetune/",
    "quality": "/quality/",
    "benchmarks": "/benchmarks/",
    "usage": "/gateway/usage/",
    "health-checks": "/health/",
    "users": "/users/",
    "api-docs": "/api/v1/docs/",
}


class ChangedPages(ConsoleLiveServerTestCase):
    serve_static = True

    @pytest.fixture(autouse=True)
    def _fixtures(self, browser, artifacts):
        self.browser, self.artifacts = browser, artifacts

    def test_every_main_page_in_chinese(self):
        """Each page of the menu as the admin sees it in zh-Hans: it loads without a script error, its <html> says
        zh-hans and its heading is Chinese; a screenshot of each goes to test-artifacts/screenshots/."""
        from django.urls import reverse

        from console.navigation import NAVIGATION

        admin = UserFactory(username="zh-admin", roles=["admin"])
        engineer = UserFactory(username="zh-engineer", roles=["engineer"])
        seeded = seed_objects(admin, engineer)
        menu = {reverse(item.url_name) for item in NAVIGATION}
        pages = {**MAIN_PAGES}
        assert menu <= {path.format(**seeded) for path in {**PAGES, **MAIN_PAGES}.values()}, menu
        context = self.browser.new_context(viewport={"width": 1400, "height": 1000})
        context.add_cookies([{"name": settings.LANGUAGE_COOKIE_NAME, "value": "zh-hans", "url": self.live_server_url}])
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(self.live_server_url + "/login/")
        page.fill("#id_username", admin.username)
        page.fill("#id_password", PASSWORD)
        page.click("#login-submit")
        page.wait_for_selector("#my-actions")
        for name, path in pages.items():
            response = page.goto(self.live_server_url + path.format(**seeded))
            assert response is not None and response.status == 200, (path, response and response.status)
            page.screenshot(path=str(self.artifacts / f"main-{name}-zh-hans.png"), full_page=True)
            if name == "api-docs":
                continue  # the schema viewer (drf-spectacular's Swagger UI) is not the console's own page
            assert page.locator("html[lang='zh-hans']").count() == 1, path
            heading = page.locator("h1").first.inner_text() if page.locator("h1").count() else ""
            if name != "model":  # a model's page is headed by its name
                assert any("\u4e00" <= char <= "\u9fff" for char in heading), (path, heading)
        assert not errors, errors
        context.close()

    def test_changed_pages_in_english_and_chinese(self):
        admin = UserFactory(username="shots-admin", roles=["admin"])
        engineer = UserFactory(username="shots-engineer", roles=["engineer"])
        seeded = seed_objects(admin, engineer)
        for language in ("en", "zh-hans"):
            context = self.browser.new_context(viewport={"width": 1400, "height": 1000})
            context.add_cookies(
                [{"name": settings.LANGUAGE_COOKIE_NAME, "value": language, "url": self.live_server_url}]
            )
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error, errors=errors: errors.append(str(error)))
            page.goto(self.live_server_url + "/login/")
            page.fill("#id_username", admin.username)
            page.fill("#id_password", PASSWORD)
            page.click("#login-submit")
            page.wait_for_selector("#my-actions")
            for name, path in PAGES.items():
                response = page.goto(self.live_server_url + path.format(**seeded))
                assert response is not None and response.status == 200, (language, path, response and response.status)
                assert page.locator(f"html[lang='{language}']").count() == 1, (language, path)
                page.screenshot(path=str(self.artifacts / f"{name}-{language}.png"), full_page=True)
            assert not errors, (language, errors)
            context.close()
