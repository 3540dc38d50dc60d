"""Engineers train on data they may not read. A dataset's rows carry a unique canary string; an engineer of the
owning team (a data steward, who uploads versions) walks every dataset route of the API and pages, the upload
responses, the validation errors of a deliberately malformed canary line, and the jobs API: the canary appears in
none of them. An auditor's preview shows it, and that preview is an audit event that does not hold it."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Group
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from audit.models import AuditEvent
from console.accounts.services.access import object_grant
from deployments.datasets import services
from deployments.models import DatasetUpload

pytestmark = pytest.mark.django_db

CANARY = "CANARY-5d1c0e7a-9b42-row-content"
ROWS = (
    b'{"messages": [{"role": "user", "content": "ask ' + CANARY.encode() + b'"}, '
    b'{"role": "assistant", "content": "answer ' + CANARY.encode() + b'"}]}\n'
) * 3
# Line 2 is broken JSON holding the canary, line 3 a chat without an assistant turn holding it.
MALFORMED = (
    ROWS[: ROWS.index(b"\n") + 1]
    + b'{"messages": [{"role": "user", "content": "'
    + CANARY.encode()
    + b"\n"
    + b'{"messages": [{"role": "'
    + CANARY.encode()
    + b'", "content": "'
    + CANARY.encode()
    + b'"}]}\n'
)


def _routes(resolver=None, prefix="") -> list[str]:
    found = []
    for pattern in (resolver or get_resolver()).url_patterns:
        text = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            found.extend(_routes(pattern, text))
        elif isinstance(pattern, URLPattern):
            found.append("/" + text)
    return found


def _dataset_urls(ids: dict) -> list[str]:
    """Every GET-able dataset route with real ids in it (new routes join the walk by themselves)."""
    urls = set()
    for route in _routes():
        if "dataset" not in route or "<format>" in route or "\\.(?P<format>" in route:
            continue
        url = route.replace("^", "").replace("$", "")
        url = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"<\1>", url)
        kind = "upload" if "uploads" in url else "dataset"
        url = re.sub(r"<(?:int:)?pk>", str(ids[kind]), url)
        url = re.sub(r"<(?:int:)?version>", "1", url)
        urls.add(url)
    return sorted(urls)


def _client(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def _upload(client: APIClient, dataset_id: int, content: bytes) -> list:
    """The responses of one upload, opened, sent in two chunks and completed."""
    opened = client.post(
        "/api/v1/datasets/uploads/",
        {"dataset": dataset_id, "filename": "rows.jsonl", "size": len(content)},
        format="json",
    )
    url = f"/api/v1/datasets/uploads/{opened.json()['id']}/"
    half = len(content) // 2
    first = client.put(f"{url}?offset=0", content[:half], content_type="application/octet-stream")
    second = client.put(f"{url}?offset={half}", content[half:], content_type="application/octet-stream")
    status = client.get(url)
    done = client.post(f"{url}complete/", {}, format="json")
    return [opened, first, second, status, done]


def test_the_canary_in_a_datasets_rows_reaches_no_engineer_and_the_auditor_reads_it(
    settings, tmp_path, admin, engineer, auditor
):
    settings.DATASET_STORE = tmp_path / "datasets"
    team = Group.objects.create(name="canary-team")
    team.user_set.add(engineer)
    object_grant(actor=admin, grantee=team, action="manage_datasets", target=team)  # the engineer stewards it
    dataset = services.dataset_create(actor=admin, name="canary-set", team=team)
    engineer_api = _client(engineer)

    responses = _upload(engineer_api, dataset.pk, ROWS)
    assert responses[-1].status_code == 201, responses[-1].content
    refused = _upload(engineer_api, dataset.pk, MALFORMED)
    assert refused[-1].status_code == 400
    messages = [error["message"] for error in refused[-1].json()["errors"]]
    assert messages[0].startswith("line 2: not valid JSON") and "line 3" in messages[1]
    failed = DatasetUpload.objects.get(status="failed")
    responses += refused

    urls = _dataset_urls({"dataset": dataset.pk, "upload": failed.pk})
    assert len(urls) >= 9, urls  # list, detail, versions, version, preview, uploads: API and pages
    for url in [*urls, "/api/v1/jobs/", "/jobs/", "/"]:
        response = engineer_api.get(url)
        responses.append(response)
        # 401: the agents' internal route opens with a job's fetch token only, never a session
        assert response.status_code in (200, 401, 403, 405), (url, response.status_code)
    assert engineer_api.get(f"/api/v1/datasets/{dataset.pk}/versions/1/preview/").status_code == 403
    for response in responses:
        assert CANARY not in response.content.decode(), (response.request.get("PATH_INFO"), response.content[:300])
    assert all(CANARY not in str(row) for row in DatasetUpload.objects.values_list("errors", flat=True))

    preview = _client(auditor).get(f"/api/v1/datasets/{dataset.pk}/versions/1/preview/")
    assert preview.status_code == 200 and CANARY in preview.content.decode()
    page = _client(auditor).get(f"/datasets/{dataset.pk}/versions/1/preview/")
    assert CANARY in page.content.decode()
    previews = AuditEvent.objects.filter(action="dataset.previewed", actor_id=auditor.pk)
    assert previews.count() == 2
    for event in AuditEvent.objects.all():  # no event of the whole story holds a row
        assert CANARY not in f"{event.detail} {event.diff} {event.target_name}"
