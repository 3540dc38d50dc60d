"""The menu, the favicon and the API docs' way back: a page a role may open is in its menu (and only such pages
are), so an auditor reaches its read-only pages; every page, the Swagger page included, carries the favicon."""

from __future__ import annotations

import re

import pytest
from django.contrib.staticfiles import finders
from django.urls import reverse

from console.navigation import NAVIGATION

pytestmark = pytest.mark.django_db


def menu(page: str) -> list[str]:
    return re.findall(r'data-nav="([a-z]+)"', page)


@pytest.mark.parametrize("role", ["admin", "engineer", "auditor"])
def test_the_menu_lists_exactly_the_pages_the_role_may_open(client, users, role):
    client.force_login(users[role])
    shown = menu(client.get("/").content.decode())
    for item in NAVIGATION:
        status = client.get(reverse(item.url_name)).status_code
        assert (item.key in shown) == (status == 200), f"{role}: {item.key} answers {status}, shown={shown}"


def test_an_auditor_reaches_its_read_only_pages_from_the_menu(client, auditor):
    client.force_login(auditor)
    shown = menu(client.get("/").content.decode())
    assert {"jobs", "credentials", "audit"} <= set(shown)  # credentials was missing: the page is read-only for them
    credentials = client.get("/credentials/").content.decode()
    assert 'name="value"' not in credentials  # no form to add one


def test_pages_link_the_favicon_and_it_is_served(client, engineer):
    client.force_login(engineer)
    assert re.search(r'<link rel="icon" href="/static/console/favicon\.svg"', client.get("/jobs/").content.decode())
    client.logout()
    assert "/static/console/favicon.svg" in client.get("/login/").content.decode()  # the login page too
    assert finders.find("console/favicon.svg")


def test_the_api_docs_page_has_a_way_back_to_the_console(client, engineer):
    client.force_login(engineer)
    page = client.get("/api/v1/docs/").content.decode()
    assert re.search(r'<a class="brand" href="/" id="back-to-console">', page)
    assert 'data-nav="deployments" href="/deployments/"' in page and 'data-nav="jobs"' in page
    assert 'class="active" aria-current="page">API</a>' in page
    assert 'id="swagger-ui"' in page and "favicon.svg" in page
