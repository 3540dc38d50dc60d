"""Simplified Chinese UI: switching language, Accept-Language, English default, and a complete catalog."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import translation

pytestmark = pytest.mark.django_db

CATALOG = Path(settings.BASE_DIR) / "locale" / "zh_Hans" / "LC_MESSAGES"


def parse_po(path: Path) -> list[dict]:
    """A minimal .po reader: one dict per entry with msgctxt, msgid, msgid_plural, msgstr and flags."""
    entries: list[dict] = []
    entry: dict = {}
    field = None

    def finish():
        nonlocal entry
        if "msgid" in entry:
            entries.append(entry)
        entry = {}

    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line:
            finish()
            field = None
        elif line.startswith("#,"):
            if "msgid" in entry:
                finish()
            entry.setdefault("flags", set()).update(flag.strip() for flag in line[2:].split(","))
        elif line.startswith("#"):
            continue
        elif line.startswith('"'):
            entry[field] += ast.literal_eval(line)
        else:
            keyword, _, value = line.partition(" ")
            if keyword in ("msgctxt", "msgid") and "msgid" in entry and field != "msgctxt":
                finish()
            field = keyword
            entry[field] = ast.literal_eval(value)
    finish()
    return entries


@pytest.fixture(scope="module")
def catalog() -> list[dict]:
    return parse_po(CATALOG / "django.po")


def zh(msgid: str) -> str:
    with translation.override("zh-hans"):
        return translation.gettext(msgid)


def test_switching_to_chinese_translates_the_dashboard_and_navigation(client, admin):
    client.force_login(admin)
    response = client.post("/i18n/setlang/", {"language": "zh-hans", "next": "/"})
    assert response.status_code == 302 and response["Location"] == "/"

    page = client.get("/").content.decode()
    assert '<html lang="zh-hans">' in page
    assert zh("Dashboard") == "仪表盘"
    assert '<h1 class="h3 mb-4">仪表盘</h1>' in page
    assert re.search(r'data-nav="access"[^>]*>用户与访问权限</a>', page)
    assert "Users &amp; access" not in page and "Dashboard" not in page


@pytest.mark.parametrize("accept", ["zh-CN,zh;q=0.9", "zh-hans"])
def test_login_page_follows_accept_language(client, accept):
    page = client.get("/login/", HTTP_ACCEPT_LANGUAGE=accept).content.decode()
    assert '<html lang="zh-hans">' in page
    assert "登录控制台" in page and "Log in to the console" not in page


def test_english_is_the_default(client):
    page = client.get("/login/").content.decode()
    assert '<html lang="en">' in page
    assert "Log in to the console" in page and "登录控制台" not in page


def test_catalog_is_complete_and_not_fuzzy(catalog):
    header, *messages = catalog
    assert header["msgid"] == ""
    assert "Language: zh_Hans\n" in header["msgstr"]
    assert "Plural-Forms: nplurals=1; plural=0;" in header["msgstr"]
    assert "charset=UTF-8" in header["msgstr"]
    assert "fuzzy" not in header.get("flags", set())
    assert len(messages) > 50

    fuzzy = [e["msgid"] for e in messages if "fuzzy" in e.get("flags", set())]
    empty = [e["msgid"] for e in messages if not e.get("msgstr") and not e.get("msgstr[0]")]
    assert not fuzzy, f"fuzzy entries: {fuzzy}"
    assert not empty, f"untranslated entries: {empty}"

    placeholders = re.compile(r"%\(\w+\)[sd]|\{\{.*?\}\}")
    for entry in messages:
        if "msgstr" in entry:
            assert sorted(placeholders.findall(entry["msgid"])) == sorted(placeholders.findall(entry["msgstr"])), entry


def test_compiled_catalog_matches_the_po(catalog):
    """The committed .mo must be compiled from the committed .po (`make messages`)."""
    assert (CATALOG / "django.mo").is_file()
    simple = [e for e in catalog[1:] if "msgctxt" not in e and "msgid_plural" not in e]
    stale = {e["msgid"]: zh(e["msgid"]) for e in simple if zh(e["msgid"]) != e["msgstr"]}
    assert not stale, f"django.mo is out of date for: {stale}"
