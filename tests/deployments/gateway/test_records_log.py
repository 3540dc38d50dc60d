"""Who reads the inference log, and what: view_data holders every record with its prompt and completion (their
reading audited), those who may deploy a deployment its records without text, others nothing; the page's and the
API's filters and pages."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Group
from guardian.shortcuts import assign_perm

from audit.models import AuditEvent
from deployments.gateway import records
from tests.deployments.gateway.records_support import (
    make_record,
    queue,
    stream,  # noqa: F401  (the fixture every test here uses)
)
from tests.factories import DeploymentFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("stream")]
PAGE = "/gateway/inference-log/"
API = "/api/v1/inference-log/"
SECRET = "the secret prompt of a caller"


@pytest.fixture
def log(db):
    """Deployments alpha (team vision) and beta; three calls to alpha (one with its text kept), two to beta."""
    vision = Group.objects.create(name="vision")
    alpha = DeploymentFactory(name="alpha", team=vision)
    beta = DeploymentFactory(name="beta")
    calls = [
        make_record(0, deployment_id=alpha.pk, deployment_name="alpha", prompt={"messages": [{"content": SECRET}]}),
        make_record(1, deployment_id=alpha.pk, deployment_name="alpha", status=429, error="over quota: rpm"),
        make_record(2, deployment_id=alpha.pk, deployment_name="alpha", status=503, key_prefix="llk_zzzz"),
        make_record(3, deployment_id=beta.pk, deployment_name="beta"),
        make_record(4, deployment_id=beta.pk, deployment_name="beta", started_at="2026-12-06T08:00:00+00:00"),
    ]
    calls[0]["completion"] = "the kept answer"
    queue(calls)
    assert records.flush() == 5
    return {"alpha": alpha, "beta": beta, "vision": vision}


def shown(page: str) -> list[str]:
    return re.findall(r'data-request-id="(req-\d+)"', page)


def api_ids(response) -> list[str]:
    return [item["request_id"] for item in response.json()["results"]]


@pytest.mark.parametrize("role", ["admin", "auditor"])
def test_view_data_reads_every_record_with_its_text_and_the_reading_is_audited(client, api, users, log, role):
    client.force_login(users[role])
    page = client.get(PAGE).content.decode()
    assert shown(page) == ["req-000004", "req-000003", "req-000002", "req-000001", "req-000000"]
    assert SECRET in page and "the kept answer" in page
    body = api(users[role]).get(API).json()
    assert body["count"] == 5
    kept = next(item for item in body["results"] if item["request_id"] == "req-000000")
    assert kept["prompt"] == {"messages": [{"content": SECRET}]} and kept["completion"] == "the kept answer"
    assert (kept["batch_id"], kept["position"]) == (1, 0)
    viewed = AuditEvent.objects.filter(action="inference_log.viewed", actor_id=users[role].pk)
    assert viewed.count() == 2  # the page's first page and the API's


def test_those_who_may_deploy_a_deployment_read_its_records_without_text(client, api, engineer, log):
    client.force_login(engineer)
    assert client.get(PAGE).status_code == 403  # an engineer holds no deploy
    api(engineer).get(API, expected=403)
    assert AuditEvent.objects.filter(action="permission.denied", actor_id=engineer.pk).exists()

    assert 'data-nav="inference"' not in client.get("/").content.decode()

    assign_perm("deployments.deploy_deployment", engineer, log["alpha"])
    page = client.get(PAGE).content.decode()
    assert shown(page) == ["req-000002", "req-000001", "req-000000"]
    assert 'data-nav="inference"' in page  # the menu offers the page to those who may open it
    assert SECRET not in page and "the kept answer" not in page
    results = api(engineer).get(API).json()["results"]
    assert [(r["request_id"], r["prompt"], r["completion"]) for r in results] == [
        ("req-000002", None, ""),
        ("req-000001", None, ""),
        ("req-000000", None, ""),
    ]
    assert not AuditEvent.objects.filter(action="inference_log.viewed").exists()  # no text read


def test_a_team_scope_of_deploy_reads_the_teams_deployments_records(client, engineer, log):
    engineer.groups.add(log["vision"])
    assign_perm("deployments.deploy_group", log["vision"], log["vision"])  # deploy on every deployment it owns
    client.force_login(engineer)
    assert shown(client.get(PAGE).content.decode()) == ["req-000002", "req-000001", "req-000000"]


def test_without_a_role_or_grant_nothing(client, api, nobody, log):
    client.force_login(nobody)
    assert client.get(PAGE).status_code == 403
    api(nobody).get(API, expected=403)
    client.logout()
    assert client.get(PAGE).status_code == 302
    api(None).get(API, expected=401)


def test_filters_narrow_the_page_and_the_api_alike(client, api, auditor, log):
    client.force_login(auditor)
    cases = {
        "deployment=beta": ["req-000004", "req-000003"],
        "status=error": ["req-000002", "req-000001"],
        "status=429": ["req-000001"],
        "status=5xx": ["req-000002"],
        "key_prefix=llk_z": ["req-000002"],
        "request_id=req-000003": ["req-000003"],
        "since=2026-12-05": ["req-000004"],
        "until=2026-12-04": ["req-000003", "req-000002", "req-000001", "req-000000"],
        "deployment=alpha&status=ok": ["req-000000"],
    }
    for query, expected in cases.items():
        assert shown(client.get(f"{PAGE}?{query}").content.decode()) == expected, query
        assert api_ids(api(auditor).get(f"{API}?{query}")) == expected, query
    assert client.get(f"{PAGE}?since=yesterday").status_code == 400
    assert "status" in str(api(auditor).get(f"{API}?status=600", expected=400).json())
    api(auditor).get(f"{API}?since=2026-12-05&until=2026-12-01", expected=400)


def test_the_log_is_paginated(client, api, auditor):
    queue([make_record(i) for i in range(60)])
    records.flush()
    client.force_login(auditor)
    first = client.get(PAGE).content.decode()
    assert len(shown(first)) == 50 and "Page 1 of 2" in first
    assert shown(client.get(f"{PAGE}?page=2").content.decode()) == [f"req-{i:06d}" for i in range(9, -1, -1)]
    second = api(auditor).get(f"{API}?page=2").json()
    assert second["count"] == 60 and len(second["results"]) == 10
    # Only the first page of text is recorded as read (as for the audit log).
    assert AuditEvent.objects.filter(action="inference_log.viewed").count() == 1


def test_hostile_filters_get_an_answer_never_a_server_error(client, api, auditor, log):
    """The page and the API share the filter form and the selector; the page alone has its own pager."""
    from tests.support import hostile

    client.force_login(auditor)
    reader = api(auditor)
    values = {label: hostile.TEXT[label] for label in ("long", "nul", "huge-number", "float-garbage", "unicode")}
    for name in ("deployment", "key_prefix", "status", "request_id", "since", "until", "page"):
        for label, value in values.items():
            answer = reader.client.get(API, {name: value})
            assert answer.status_code in (200, 400, 404), (name, label, answer.status_code)
    for label, value in values.items():
        assert client.get(PAGE, {"page": value}).status_code == 200, label
        assert client.get(PAGE, {"since": value}).status_code == 400, label
