"""Every page in Chinese (issue 13 item 11): walked as an admin and as an auditor with the language set to zh-hans,
no English sentence may appear outside data. Data is what people typed (seeded names), what servers logged, code
and command lines, and the product's proper names; everything else the console says is translated."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from django.conf import settings
from django.test import Client
from django.utils import translation

from console import roles
from console.errors import ApplicationError
from deployments.models import Deployment
from deployments.serving.actions import STOP, require_action
from tests.factories import DeploymentFactory
from tests.support.fuzz_seed import seed_objects
from tests.support.page_walk import ANONYMOUS_PAGES, pages

pytestmark = pytest.mark.django_db

# Three or more English words in a row (one of them 4+ letters): a sentence or a label that escaped gettext.
ENGLISH = re.compile(r"\b[A-Za-z][a-z]+(?:[ '-]+[A-Za-z][a-z]*){2,}\b")
LONG_WORD = re.compile(r"[A-Za-z]{4,}")
# Names, not sentences: products, formats and standards keep their names in Chinese text too.
PROPER_NAMES = (
    "Text Generation Inference",
    "Hugging Face",
    "Hugging Face Hub",
    "NVIDIA Container Toolkit",
    "Swagger UI",
)
SKIPPED_TAGS = {"script", "style", "code", "pre", "kbd", "samp", "option", "textarea"}
# Visible text in attributes: tooltips, placeholders, labels read by screen readers, confirmation texts.
SHOWN_ATTRIBUTES = {"title", "placeholder", "aria-label", "data-confirm", "data-confirm-label", "alt"}
DATA_MARKERS = {"data-seq", "data-raw", "data-user-text"}  # log lines and what people typed, by the page's word


class _VisibleText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.skipping: list[str] = []
        self.chunks: list[str] = []

    def handle_starttag(self, tag: str, attrs) -> None:
        names = {name for name, _ in attrs}
        if tag in SKIPPED_TAGS or names & DATA_MARKERS:
            if tag not in {"input", "br", "img", "meta", "link"}:
                self.skipping.append(tag)
            return
        if not self.skipping:
            self.chunks.extend(value for name, value in attrs if name in SHOWN_ATTRIBUTES and value)

    def handle_endtag(self, tag: str) -> None:
        if self.skipping and self.skipping[-1] == tag:
            self.skipping.pop()

    def handle_data(self, data: str) -> None:
        if not self.skipping and data.strip():
            self.chunks.append(data.strip())


def english_sentences(html: str, data: set[str]) -> list[str]:
    parser = _VisibleText()
    parser.feed(html)
    found = []
    for chunk in parser.chunks:
        text = chunk
        for known in sorted(data | set(PROPER_NAMES), key=len, reverse=True):
            text = text.replace(known, " ")
        for match in ENGLISH.finditer(text):
            if LONG_WORD.search(match.group()):
                found.append(match.group())
    return found


def _data_of_the_seed() -> set[str]:
    """What the seeded objects are called: names people chose, ids of models, paths, usernames."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from console.accounts.models import ApiToken, Credential
    from deployments.models import AllowedImage, Deployment, Host, ModelArtifact, ModelRepo, ModelSource

    names: set[str] = set()
    for model, fields in (
        (get_user_model(), ("username",)),
        (Group, ("name",)),
        (Credential, ("name",)),
        (ApiToken, ("name",)),
        (Host, ("name",)),
        (ModelSource, ("name",)),
        (ModelRepo, ("repo_id",)),
        (ModelArtifact, ("path",)),
        (Deployment, ("name",)),
        (AllowedImage, ("reference",)),
    ):
        for values in model.objects.values_list(*fields):
            names.update(str(value) for value in values if value)
    return names


@pytest.mark.parametrize("role", ["admin", "auditor"])
def test_every_page_is_chinese(role, admin, engineer, auditor):
    seeded = seed_objects(admin, engineer)
    user = {"admin": admin, "auditor": auditor}[role]
    client = Client(headers={"accept-language": "zh-hans"})
    client.force_login(user)
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = "zh-hans"
    anonymous = Client(headers={"accept-language": "zh-hans"})
    anonymous.cookies[settings.LANGUAGE_COOKIE_NAME] = "zh-hans"
    data = _data_of_the_seed()
    english: dict[str, list[str]] = {}
    walked = 0
    for route, url in pages(seeded):
        page = (anonymous if route in ANONYMOUS_PAGES else client).get(url)
        if page.status_code != 200 or not page["Content-Type"].startswith("text/html"):
            continue  # not this role's page (403/404), a redirect or a download
        walked += 1
        assert 'lang="zh-hans"' in page.content.decode(), f"{url} is not served in Chinese"
        found = english_sentences(page.content.decode(), data)
        if found:
            english[url] = sorted(set(found))
    assert walked >= 10, f"only {walked} pages answered"
    report = "\n".join(f"{url}: {', '.join(found)}" for url, found in sorted(english.items()))
    assert not english, f"English on {len(english)} of {walked} pages in zh-hans:\n{report}"


def _chinese_client(user) -> Client:
    client = Client(headers={"accept-language": "zh-hans"})
    client.force_login(user)
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = "zh-hans"
    return client


def test_grants_name_the_action_in_words_not_its_codename(admin, engineer):
    """The grants table showed `view` and `deploy` (codenames, one word: too short for the sentence rule)."""
    seed_objects(admin, engineer)  # grants `view` on the deployment to team nlp
    page = _chinese_client(admin).get("/grants/").content.decode()
    with translation.override("zh-hans"):
        words = str(roles.ACTIONS[roles.VIEW])
    assert f'<td title="view">{words}</td>' in page
    assert "<td>view</td>" not in page


def test_a_refused_action_reads_as_chinese_with_the_verb_not_the_state():
    """The word "stopped" is a state (已停止) and, after "cannot be", a verb (停止): one msgid cannot say both."""
    stopped = DeploymentFactory(state=Deployment.State.STOPPED)
    with translation.override("zh-hans"), pytest.raises(ApplicationError) as refused:
        require_action(stopped, STOP)
    message = refused.value.message
    assert "无法停止" in message and "无法已停止" not in message
    assert "已停止" in message and "启动, 删除" in message  # the state, then what is possible
