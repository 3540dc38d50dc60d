"""Issue 13 item 14: every form looks like the rest. Walking every page as an admin, each text-like input, select
and text area carries Bootstrap's class (the credentials, users, tokens and grants forms had bare inputs)."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from django.test import Client

from tests.support.fuzz_seed import seed_objects
from tests.support.page_walk import ANONYMOUS_PAGES, pages

pytestmark = pytest.mark.django_db
STYLED = {"form-control", "form-select", "form-check-input", "btn-check", "form-range"}
UNSTYLED_TYPES = {"hidden", "submit", "button", "reset", "image", "checkbox", "radio", "file"}


class _Inputs(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.bare: list[str] = []

    def handle_starttag(self, tag: str, attrs) -> None:
        a = {key: value or "" for key, value in attrs}
        if tag == "input" and a.get("type", "text").lower() in UNSTYLED_TYPES:
            return
        if tag in {"input", "select", "textarea"} and not STYLED & set(a.get("class", "").split()):
            self.bare.append(f"<{tag} name={a.get('name', '?')}>")


def test_every_form_input_is_styled(admin, engineer):
    seeded = seed_objects(admin, engineer)
    client = Client()
    client.force_login(admin)
    bare: dict[str, list[str]] = {}
    for route, url in pages(seeded):
        page = (Client() if route in ANONYMOUS_PAGES else client).get(url)
        if page.status_code != 200 or not page["Content-Type"].startswith("text/html"):
            continue
        parser = _Inputs()
        parser.feed(page.content.decode())
        if parser.bare:
            bare[url] = parser.bare
    assert not bare, "inputs without Bootstrap's classes:\n" + "\n".join(f"{u}: {b}" for u, b in bare.items())
