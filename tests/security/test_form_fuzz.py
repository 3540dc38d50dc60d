"""Every field of every HTML form, filled with hostile values (tests/support/hostile.py) by a logged-in admin: no
answer is a 500, and text no field can hold (a NUL character) is refused with the form shown again or a 4xx.

The forms are the ones the pages render (every page of the URL map, `<pk>` filled with seeded objects), as a
browser would post them: the page's defaults, one field replaced. Named submit buttons (a form's "delete") are
fields too. Each post runs in a savepoint rolled back after the answer, and the session cookie comes back after
each one, so a logout, a password change or a deleted host never hides the posts after it. The counts are
printed and written to test-artifacts/form-fuzz.json.
"""

from __future__ import annotations

import json
import re
import time
import traceback
from collections import Counter
from http.cookies import SimpleCookie
from urllib.parse import urlsplit

import pytest
from django.db import transaction
from django.test import Client
from django.urls import resolve

from tests.support import hostile
from tests.support.fixtures import ROOT
from tests.support.fuzz_heap import steady_heap
from tests.support.fuzz_seed import seed_objects
from tests.support.html_forms import HtmlForm, post_forms
from tests.support.page_walk import ANONYMOUS_PAGES, NOT_PAGES, pages, routes

pytestmark = pytest.mark.django_db

ARTIFACT = ROOT / "test-artifacts" / "form-fuzz.json"
VALUES: dict[str, str | list[str]] = {**hostile.TEXT, "list": hostile.FORM_LIST}
UNSTORABLE = {"nul", "only-nul"}
TEXT_KINDS = {"text", "password", "email", "url", "number", "search", "tel", "textarea"}  # typed by a user
# The test client does not check CSRF (a wrong token is a 403 before any view): nothing to learn there.
NOT_FUZZED = {"csrfmiddlewaretoken"}


def _posting_routes() -> set[str]:
    """Routes whose view takes a POST (class-based views with a `post`), as regular expressions."""
    posting = set()
    for route, pattern in routes():
        view = getattr(pattern.callback, "view_class", None)
        if view is not None and hasattr(view, "post") and not route.startswith(NOT_PAGES):
            posting.add(route)
    return posting


def _collect_forms(admin_client, anonymous_client, seeded: dict[str, int]) -> dict[tuple, tuple]:
    """Every distinct POST form of every page (by action and fields), with the client that sees the page."""
    forms: dict[tuple, tuple] = {}
    for route, url in pages(seeded):
        client = anonymous_client if route in ANONYMOUS_PAGES else admin_client
        page = client.get(url)
        assert page.status_code in {200, 302}, f"GET {url}: {page.status_code}"  # 302: its form is elsewhere
        if page.status_code != 200 or not page["Content-Type"].startswith("text/html"):
            continue  # a download (the audit export) or a redirect: no form
        for form in post_forms(page.content.decode(), f"http://testserver{url}"):
            route = resolve(urlsplit(form.action).path).route  # one form per view: not one per listed endpoint
            forms.setdefault((route, *form.fields, *form.buttons), (form, client))
    return forms


def _post(client, form: HtmlForm, data: dict) -> tuple[int, str]:
    """Post in a savepoint rolled back after the answer; returns the status and, for a crash, its traceback."""
    cookies = {name: morsel.value for name, morsel in client.cookies.items()}
    try:
        with transaction.atomic():
            status = client.post(urlsplit(form.action).path, data).status_code
            transaction.set_rollback(True)
    except Exception:  # the test client re-raises what the view raised: a browser would get a 500
        status, crash = 500, traceback.format_exc()
    else:
        crash = ""
    client.cookies = SimpleCookie(cookies)  # a logout or a language switch lasts one post
    return status, crash


def test_no_form_field_answers_with_a_server_error(client, admin, engineer, monkeypatch):
    # The test client copies the context of every template a page renders (a form page: ~170, one per widget)
    # for response.context; the posts here read only the status.
    monkeypatch.setattr("django.test.client.store_rendered_templates", lambda *args, **kwargs: None)
    seeded = seed_objects(admin, engineer)
    anonymous = Client()
    client.force_login(admin)
    started = time.monotonic()
    forms = _collect_forms(client, anonymous, seeded)
    posted_routes = {urlsplit(form.action).path for form, _ in forms.values()}
    unreached = [r for r in _posting_routes() if not any(re.fullmatch(_pattern(r), p) for p in posted_routes)]
    assert not unreached, f"views that take a POST but no page renders a form for: {unreached}"

    statuses, failures, accepted, per_form = Counter(), [], [], {}
    with steady_heap():
        for form, user_client in forms.values():
            form_started, form_cases = time.monotonic(), statuses.total()
            _fuzz_form(form, user_client, statuses=statuses, failures=failures, accepted=accepted)
            path = urlsplit(form.action).path
            key = path if path not in per_form else f"{path} (form {len(per_form) + 1})"  # a second form there
            per_form[key] = {
                "posts": statuses.total() - form_cases,
                "seconds": round(time.monotonic() - form_started, 2),
            }
    cases = statuses.total()
    summary = {
        "forms": len(forms),
        "fields": sum(len(set(form.fields) - NOT_FUZZED) + len(form.buttons) for form, _ in forms.values()),
        "values": len(VALUES),
        "cases": cases,
        "statuses": dict(sorted(Counter({str(k): v for k, v in statuses.items()}).items())),
        "seconds": round(time.monotonic() - started, 1),
        "per_form": per_form,
    }
    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_text(json.dumps(summary, indent=1) + "\n")
    print(
        f"\nform fuzz: {summary['forms']} forms, {summary['fields']} fields, {summary['values']} values, "
        f"{cases} posts, {summary['seconds']} s"
    )
    assert not failures, f"{len(failures)} server errors:\n" + "\n".join(failures)
    assert not accepted, "a text field took a NUL character instead of refusing it:\n" + "\n".join(accepted)


def _fuzz_form(form: HtmlForm, client, *, statuses: Counter, failures: list[str], accepted: list[str]) -> None:
    """Every fuzzed field of one form, in turn, with every value; the rest of the form as the page sends it."""
    fields = [(name, None) for name in form.fields if name not in NOT_FUZZED]
    fields += [(name, name) for name in form.buttons]
    for name, button in fields:
        for label, value in VALUES.items():
            status, crash = _post(client, form, {**form.defaults, name: value})
            statuses[status] += 1
            where = f"POST {urlsplit(form.action).path} {'button ' if button else ''}{name}={label}"
            if status >= 500:
                failures.append(f"{status}: {where}\n{crash}")
            elif label in UNSTORABLE and 300 <= status < 400 and form.kinds.get(name) in TEXT_KINDS:
                accepted.append(f"{status}: {where}")


def _pattern(route: str) -> str:
    return "/" + re.sub(r"<int:\w+>", r"\\d+", route)
