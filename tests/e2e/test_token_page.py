"""In a real browser: a new API token is shown once with a working copy button, and reloading the page after
creating it creates no second token (post/redirect/get)."""

from __future__ import annotations

import pytest

from console.accounts.models import ApiToken
from tests.e2e.live import ConsoleLiveServerTestCase
from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.browser


class TokenPageTests(ConsoleLiveServerTestCase):
    serve_static = True

    @pytest.fixture(autouse=True)
    def _browser(self, browser, artifacts):
        self.browser = browser
        self.artifacts = artifacts

    def test_create_a_token_copy_it_and_reload_without_a_second_token(self):
        user = UserFactory(username="engineer-tokens", roles=["engineer"])
        context = self.browser.new_context(viewport={"width": 1280, "height": 800})
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=self.live_server_url)
        page = context.new_page()
        page.goto(self.live_server_url + "/login/")
        page.fill("#id_username", user.username)
        page.fill("#id_password", PASSWORD)
        page.click("#login-submit")
        page.goto(self.live_server_url + "/tokens/")
        page.fill("#id_name", "notebook")
        page.click("button[type=submit].btn-primary")
        page.wait_for_selector("#new-token-value")
        assert page.url == self.live_server_url + "/tokens/"
        value = page.inner_text("#new-token-value").strip()
        assert value.startswith("lld_")

        page.click("#new-token-copy")
        page.wait_for_selector("#new-token-copy[data-copied='true']")
        assert page.evaluate("navigator.clipboard.readText()") == value
        page.screenshot(path=str(self.artifacts / "token-created.png"), full_page=True)

        page.reload()
        page.wait_for_load_state()
        assert page.locator("#new-token").count() == 0  # shown once
        assert value not in page.content()
        assert ApiToken.objects.filter(user=user).count() == 1
        context.close()
