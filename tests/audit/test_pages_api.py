"""The audit log's page, export and API: filters, pagination, expandable rows, exports, verification."""

from __future__ import annotations

import csv
import html
import io
import json
import re
import time
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

import audit
from audit import tasks as audit_tasks
from audit.checkpoints import checkpoint_create
from audit.export import COLUMNS
from audit.models import AuditEvent
from tests.audit.tampering import Tamper

pytestmark = pytest.mark.django_db
SEQ = re.compile(r'data-seq="(\d+)"')


def record(**kwargs) -> AuditEvent:
    event = audit.record(**kwargs)
    time.sleep(0.003)  # distinct database times (SQLite's clock has millisecond steps)
    return event


@pytest.fixture
def seeded(admin, engineer) -> dict[str, AuditEvent]:
    return {
        "start": record(
            action="deployment.start",
            actor=admin,
            target_type="deployments.deployment",
            target_id="7",
            target_name="llama-prod",
            source="api",
            changes={"replicas": [1, 2], "image": ["tgi:2.0", "tgi:2.1"]},
            detail={"gpu": "0"},
        ),
        "stop": record(
            action="deployment.stop",
            actor=engineer,
            target_type="deployments.deployment",
            target_id="8",
            target_name="mistral-dev",
            source="ui",
            outcome="denied",
        ),
        "login": record(
            action="auth.login_failed",
            actor=None,
            actor_name="worker:host-1",
            target_type="auth.user",
            target_id="3",
            target_name="bob",
            source="worker",
            outcome="failure",
        ),
    }


def ids_of(results) -> set[int]:
    return {item["id"] for item in results}


def listed(api, user, **params) -> list[dict]:
    return api(user).get("/api/v1/audit/events/", data={"page_size": 500, **params}).json()["results"]


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


def streamed(response) -> str:
    return b"".join(response.streaming_content).decode()


# Filters


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, {"start", "stop", "login"}),
        ({"actor": "ALICE"}, {"start"}),
        ({"actor": "worker:"}, {"login"}),
        ({"action": "deployment.stop"}, {"stop"}),
        ({"action": "deployment."}, {"start", "stop"}),
        ({"action": "deployment"}, set()),  # no dot: exact, and no action is named that
        ({"target_type": "deployments.deployment"}, {"start", "stop"}),
        ({"target_type": "deployments.deployment", "target_id": "8"}, {"stop"}),
        ({"source": "worker"}, {"login"}),
        ({"outcome": "denied"}, {"stop"}),
        ({"q": "PROD"}, {"start"}),
        ({"action": "deployment.", "source": "ui"}, {"stop"}),
    ],
)
def test_each_filter_narrows_the_list(api, auditor, seeded, params, expected):
    results = listed(api, auditor, **params)
    seeded_ids = {event.id: name for name, event in seeded.items()}
    assert {seeded_ids[i] for i in ids_of(results) if i in seeded_ids} == expected
    # ... and nothing outside the filter came along.
    for item in results:
        for field in ("source", "outcome", "target_type", "target_id"):
            if field in params:
                assert item[field] == params[field]
        if "actor" in params:
            assert params["actor"].lower() in item["actor"].lower()
        if "q" in params:
            assert params["q"].lower() in item["target_name"].lower()
        if params.get("action", "").endswith("."):
            assert item["action"].startswith(params["action"])


def test_time_range_filters(api, auditor, seeded):
    start, stop, login = seeded["start"], seeded["stop"], seeded["login"]
    assert start.created_us < stop.created_us < login.created_us
    today = timezone.now().date()
    mine = {start.id, stop.id, login.id}

    def window(**params) -> set[int]:
        return ids_of(listed(api, auditor, **params)) & mine

    assert window(since=today.isoformat()) == mine
    assert window(until=today.isoformat()) == mine  # a date alone: through the end of that day
    assert window(since=(today + timedelta(days=1)).isoformat()) == set()
    assert window(until=(today - timedelta(days=1)).isoformat()) == set()
    assert window(since=stop.created_at.isoformat()) == {stop.id, login.id}
    assert window(until=stop.created_at.isoformat()) == {start.id, stop.id}
    assert window(since=start.created_at.isoformat(), until=stop.created_at.isoformat()) == {start.id, stop.id}
    minute = stop.created_at.strftime("%Y-%m-%dT%H:%M")
    assert stop.id in window(since=minute)


def test_a_bad_since_is_a_field_error_in_the_api_and_on_the_page(api, auditor, client):
    response = api(auditor).get("/api/v1/audit/events/", 400, data={"since": "last tuesday"})
    assert list(response.json()) == ["since"] and response.json()["since"]
    response = api(auditor).get("/api/v1/audit/events/", 400, data={"since": "2025-03-02", "until": "2025-03-01"})
    assert "until" in response.json()

    client.force_login(auditor)
    response = client.get("/audit/", {"since": "last tuesday", "actor": "x"})
    assert response.status_code == 400
    page = response.content.decode()
    assert 'data-field-error="since"' in page
    assert "Fix the filters above to see events." in page


def test_retrieve_shows_parsed_json_and_an_iso_time(api, auditor, seeded):
    event = seeded["start"]
    data = api(auditor).get(f"/api/v1/audit/events/{event.id}/").json()
    assert data["diff"] == {"image": ["tgi:2.0", "tgi:2.1"], "replicas": [1, 2]}
    assert data["detail"]["gpu"] == "0"
    assert data["roles"] == ["admin"] and data["actor"] == "alice-admin"
    assert data["time"].startswith(event.created_at.strftime("%Y-%m-%dT%H:%M:%S"))
    assert data["hash"] == event.hash and data["prev_hash"] == event.prev_hash
    api(auditor).get("/api/v1/audit/events/999999999/", 404)


# The page


def test_pagination_keeps_the_filters(client, auditor, admin):
    bulk = [audit.record(action="test.bulk", actor=admin, target_name=f"item-{i}") for i in range(60)]
    client.force_login(auditor)
    page = client.get("/audit/", {"action": "test.bulk"}).content.decode()
    shown = [int(i) for i in SEQ.findall(page)]
    assert shown == [event.id for event in reversed(bulk)][:50]  # newest first, 50 a page
    next_link = html.unescape(re.search(r'data-page="2" href="([^"]+)"', page).group(1))
    assert next_link == "?page=2&action=test.bulk"
    assert "format=csv&amp;action=test.bulk" in page  # the export buttons carry the filters too

    page2 = client.get("/audit/" + next_link).content.decode()
    assert [int(i) for i in SEQ.findall(page2)] == [event.id for event in reversed(bulk)][50:]
    previous = html.unescape(re.search(r'data-page="1" href="([^"]+)"', page2).group(1))
    assert previous == "?page=1&action=test.bulk"


def test_a_row_expands_to_its_diff_detail_and_hash(client, auditor, seeded):
    client.force_login(auditor)
    page = client.get("/audit/", {"action": "deployment.start"}).content.decode()
    event = seeded["start"]
    row = page[page.index(f'data-seq="{event.id}"') :]
    row = row[: row.index("</details>")]
    assert "<summary" in row
    assert '<td><code>image</code></td><td data-diff="before">tgi:2.0</td><td data-diff="after">tgi:2.1</td>' in row
    assert '<td data-diff="before">1</td><td data-diff="after">2</td>' in row
    assert event.hash in row and event.request_id in row
    assert "&quot;gpu&quot;: &quot;0&quot;" in row  # the detail JSON, escaped


def test_viewing_the_first_page_is_audited_once(client, auditor, seeded):
    client.force_login(auditor)
    before = len(events("audit.viewed"))
    client.get("/audit/", {"action": "deployment."})
    viewed = events("audit.viewed")
    assert len(viewed) == before + 1
    assert viewed[-1].actor_name == auditor.username and viewed[-1].source == "ui"
    assert viewed[-1].details["filters"] == {"action": "deployment."}
    client.get("/audit/", {"action": "deployment.", "page": "2"})
    assert len(events("audit.viewed")) == before + 1


def test_live_attributes_and_empty_state(client, auditor, seeded):
    client.force_login(auditor)
    page = client.get("/audit/").content.decode()
    head = AuditEvent.objects.order_by("-id").first().id
    assert 'data-live="1"' in page and f'data-after="{head}"' in page
    assert 'id="audit-event-template"' in page and "console/audit.js" in page
    page = client.get("/audit/", {"actor": "nobody-by-that-name"}).content.decode()
    assert 'data-live="0"' in page and "No events match these filters" in page


def test_verification_side_card(client, auditor, seeded):
    client.force_login(auditor)
    page = client.get("/audit/").content.decode()
    total = AuditEvent.objects.count()
    assert f"{total}/{total} events valid" in page and "No checkpoint yet." in page
    assert "an edit to an older event is found by the full walk" in html.unescape(page)

    checkpoint = checkpoint_create()
    page = client.get("/audit/").content.decode()
    assert f"#{checkpoint.id}" in page and f"#{checkpoint.last_event_id}" in page
    with Tamper() as tamper:
        tamper.sql(
            "UPDATE audit_auditevent SET target_name = 'forged' WHERE id = %s",
            [AuditEvent.objects.order_by("-id").first().id],
        )
    page = client.get("/audit/").content.decode()
    assert 'class="text-danger mb-2" data-ok="0"' in page and "Chain broken at position" in page


# Exports


def parse_csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_export_holds_exactly_the_filtered_events_and_is_audited(client, auditor, seeded):
    client.force_login(auditor)
    response = client.get("/audit/export/", {"format": "csv", "action": "deployment."})
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"].startswith("text/csv")
    assert re.fullmatch(r'attachment; filename="audit-\d{8}T\d{6}Z\.csv"', response["Content-Disposition"])
    text = streamed(response)
    rows = parse_csv(text)
    assert text.splitlines()[0].split(",") == list(COLUMNS)
    assert [int(row["id"]) for row in rows] == [seeded["start"].id, seeded["stop"].id]  # chain order
    start = rows[0]
    assert json.loads(start["diff"]) == {"image": ["tgi:2.0", "tgi:2.1"], "replicas": [1, 2]}
    assert json.loads(start["detail"])["gpu"] == "0"
    assert start["hash"] == seeded["start"].hash and start["roles"] == "admin"
    assert start["time"] == seeded["start"].created_at.isoformat()

    exported = events("audit.exported")[-1]
    assert exported.actor_name == auditor.username
    assert exported.details == {"format": "csv", "filters": {"action": "deployment."}}


def test_jsonl_export_from_the_api_holds_exactly_the_filtered_events(api, auditor, seeded):
    since = seeded["stop"].created_at
    response = api(auditor).get("/api/v1/audit/events/export/", data={"format": "jsonl", "since": since.isoformat()})
    assert response["Content-Type"].startswith("application/x-ndjson")
    assert response["Content-Disposition"].endswith('.jsonl"')
    lines = [json.loads(line) for line in streamed(response).splitlines()]
    exported = events("audit.exported")[-1]
    # Everything since `stop` that existed when the export was asked for, its own record excluded.
    expected = list(
        AuditEvent.objects.filter(created_us__gte=seeded["stop"].created_us, id__lt=exported.id)
        .order_by("id")
        .values_list("id", flat=True)
    )
    assert [line["id"] for line in lines] == expected
    assert {seeded["stop"].id, seeded["login"].id} <= set(expected) and seeded["start"].id not in expected
    assert set(lines[0]) == set(COLUMNS)
    stop = next(line for line in lines if line["id"] == seeded["stop"].id)
    assert stop["outcome"] == "denied" and stop["roles"] == ["engineer"] and isinstance(stop["detail"], dict)
    assert exported.details == {"format": "jsonl", "filters": {"since": since.isoformat()}}
    assert exported.source == "api"


def test_an_unfiltered_export_holds_the_whole_chain_before_it(api, admin, seeded):
    lines = [
        json.loads(line)
        for line in streamed(api(admin).get("/api/v1/audit/events/export/", data={"format": "jsonl"})).splitlines()
    ]
    exported = events("audit.exported")[-1]
    before = list(AuditEvent.objects.filter(id__lt=exported.id).order_by("id").values_list("id", flat=True))
    assert [line["id"] for line in lines] == before and before[-1] == exported.id - 1


def test_export_is_not_bound_by_the_chunk_size(api, auditor, admin, monkeypatch):
    from audit import export

    monkeypatch.setattr(export, "CHUNK_SIZE", 7)
    bulk = [audit.record(action="test.chunked", actor=admin) for _ in range(23)]
    response = api(auditor).get("/api/v1/audit/events/export/", data={"format": "csv", "action": "test.chunked"})
    assert [int(row["id"]) for row in parse_csv(streamed(response))] == [event.id for event in bulk]


@pytest.mark.django_db(transaction=True)
async def test_under_asgi_the_export_streams_from_an_async_iterator(async_client, auditor, seeded):
    """A sync iterator would make Django's ASGI handler read the whole export into memory first."""
    await async_client.aforce_login(auditor)
    response = await async_client.get("/api/v1/audit/events/export/", {"format": "jsonl", "action": "deployment."})
    assert response.status_code == 200 and response.streaming and response.is_async
    body = b"".join([chunk async for chunk in response.streaming_content]).decode()
    assert [json.loads(line)["id"] for line in body.splitlines()] == [seeded["start"].id, seeded["stop"].id]


def test_csv_cells_cannot_start_a_formula(client, auditor, admin):
    audit.record(
        action="test.formula",
        actor=admin,
        target_name='=HYPERLINK("http://evil.example","x")',
        target_id="-1+2",
        target_type="@sum",
    )
    client.force_login(auditor)
    row = parse_csv(streamed(client.get("/audit/export/", {"format": "csv", "action": "test.formula"})))[0]
    assert row["target_name"] == '\'=HYPERLINK("http://evil.example","x")'
    assert row["target_id"] == "'-1+2" and row["target_type"] == "'@sum"
    assert row["actor"] == admin.username
    line = json.loads(streamed(client.get("/audit/export/", {"format": "jsonl", "action": "test.formula"})))
    assert line["target_name"].startswith("=")  # JSON is data, not a spreadsheet: left as is


def test_bad_export_requests(api, auditor, client):
    response = api(auditor).get("/api/v1/audit/events/export/", 400, data={"format": "xlsx"})
    assert "format" in response.json()
    response = api(auditor).get("/api/v1/audit/events/export/", 400, data={"format": "csv", "since": "soon"})
    assert "since" in response.json()
    client.force_login(auditor)
    before = len(events("audit.exported"))
    response = client.get("/audit/export/", {"format": "xlsx", "actor": "bob"})
    assert response.status_code == 302 and response["Location"] == "/audit/?actor=bob"
    assert len(events("audit.exported")) == before


# Verification and checkpoints


def test_verification_endpoint_finds_a_tampered_event(api, auditor, seeded):
    data = api(auditor).get("/api/v1/audit/verification/").json()
    total = AuditEvent.objects.count()
    assert data["ok"] is True and data["checked"] == data["total"] == total
    assert data["checkpoint"] is None and data["broken_id"] is None

    with Tamper() as tamper:
        tamper.sql("UPDATE audit_auditevent SET actor_name = 'mallory' WHERE id = %s", [seeded["stop"].id])
    # An event older than the last verified head is the full walk's to find, not a page view's (milliseconds at 1M
    # events); once it ran, the page shows its break.
    data = api(auditor).get("/api/v1/audit/verification/").json()
    assert data["ok"] is True
    with pytest.raises(SystemExit):
        call_command("audit_verify", stdout=io.StringIO())
    data = api(auditor).get("/api/v1/audit/verification/").json()
    assert data["ok"] is False and data["broken_id"] == seeded["stop"].id
    assert data["walk"]["source"] == "audit_verify" and data["walk"]["ok"] is False
    assert data["broken_position"] == seeded["stop"].id  # the chain starts at id 1, position 1
    assert "edited" in data["summary"]


def test_verification_from_the_last_checkpoint(api, auditor, admin, seeded):
    checkpoint = checkpoint_create()
    after = [record(action="test.after_checkpoint", actor=admin) for _ in range(2)]
    data = api(auditor).get("/api/v1/audit/verification/").json()
    newer = AuditEvent.objects.filter(id__gt=checkpoint.last_event_id).count()  # with the test client's login
    assert data["ok"] is True and data["checked"] == data["total"] == newer >= 2
    assert data["after_id"] == checkpoint.last_event_id
    assert data["checkpoint"]["id"] == checkpoint.id and data["checkpoint"]["valid"] is True
    assert data["checkpoint"]["signature"] == checkpoint.signature

    with Tamper() as tamper:
        tamper.sql("UPDATE audit_auditevent SET action = 'test.forged' WHERE id = %s", [after[1].id])
    assert audit_tasks.checkpoint() is None  # the periodic walk (from the checkpoint) finds it and signs nothing
    data = api(auditor).get("/api/v1/audit/verification/").json()
    assert data["ok"] is False and data["broken_id"] == after[1].id and data["checkpoint"]["valid"] is True

    with Tamper() as tamper:  # rewrite the checkpoint's head: the checkpoint no longer vouches for the chain
        tamper.sql("UPDATE audit_auditevent SET hash = %s WHERE id = %s", ["f" * 64, checkpoint.last_event_id])
    data = api(auditor).get("/api/v1/audit/verification/").json()
    assert data["ok"] is False and data["checkpoint"]["valid"] is False and data["broken_position"] == 0


def test_checkpoints_are_listed_newest_first(api, auditor, admin):
    audit.record(action="test.some", actor=admin)
    first = checkpoint_create()
    audit.record(action="test.more", actor=admin)
    second = checkpoint_create()
    data = api(auditor).get("/api/v1/audit/checkpoints/").json()
    assert data["count"] == 2
    assert data["results"] == [second.as_dict(), first.as_dict()]


# Access and schema


def test_engineers_may_not_read_the_audit_log(api, client, engineer, seeded):
    client.force_login(engineer)
    assert client.get("/audit/").status_code == 403
    assert client.get("/audit/export/", {"format": "csv"}).status_code == 403
    engineer_api = api(engineer)
    for url in (
        "/api/v1/audit/events/",
        f"/api/v1/audit/events/{seeded['start'].id}/",
        "/api/v1/audit/events/export/?format=csv",
        "/api/v1/audit/verification/",
        "/api/v1/audit/checkpoints/",
    ):
        engineer_api.get(url, 403)
    assert not events("audit.exported") and not events("audit.viewed")
    assert len(events("permission.denied")) == 7  # each refusal is itself audited


def test_the_audit_log_is_read_only(api, admin, seeded):
    admin_api = api(admin)
    for method in ("post", "put", "patch", "delete"):
        admin_api.call(method, f"/api/v1/audit/events/{seeded['start'].id}/", 405)
        admin_api.call(method, "/api/v1/audit/events/", 405)
    admin_api.call("post", "/api/v1/audit/checkpoints/", 405)
    admin_api.call("post", "/api/v1/audit/verification/", 405)


def test_the_schema_still_builds(api, admin):
    schema = api(admin).get("/api/v1/schema/", HTTP_ACCEPT="application/json").json()
    assert "/api/v1/audit/events/export/" in schema["paths"]
    assert "/api/v1/audit/verification/" in schema["paths"]
