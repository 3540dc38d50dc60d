"""Verification reads the chain in batches with a hot loop that makes no Python-level call per event,
hashing the text the database renders; it still finds any tampering at its exact place, across batch edges."""

from __future__ import annotations

import sys

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

import audit
from audit import chain, verify
from audit.models import AuditEvent
from audit.verify import verify_chain
from tests.audit.tampering import Tamper
from tests.factories import UserFactory

pytestmark = [pytest.mark.both_databases, pytest.mark.django_db]


def seed(n: int) -> list[AuditEvent]:
    return [audit.record(action="test.event", actor=None, actor_name=f"probe-{i}", detail={"i": i}) for i in range(n)]


def seed_bulk(n: int) -> None:
    """n valid events straight through SQL (audit.record runs a transaction each: too slow for thousands)."""
    columns = (*chain.HASHED_COLUMNS, "hash")
    sql = f"INSERT INTO audit_auditevent ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})"  # noqa: S608
    prev, rows = chain.GENESIS, []
    for event_id in range(1, n + 1):
        row = [event_id, 1_700_000_000_000_000 + event_id, None, "system", "[]", "bulk.event", "system", "success"]
        row += ["", "", "", "{}", f'{{"i":{event_id}}}', "", "", "0" * 32, prev]
        prev = chain.event_hash(row)
        rows.append((*row, prev))
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)


def python_calls(function) -> tuple[object, int]:
    """The result of function() and how many Python-level function calls (frames, generator resumptions
    included) ran inside it: C functions such as hashlib's are not counted."""
    calls = 0

    def profile(frame, event, arg):
        nonlocal calls
        calls += event == "call"

    sys.setprofile(profile)
    try:
        result = function()
    finally:
        sys.setprofile(None)
    return result, calls


def test_verification_makes_no_python_call_per_event_and_one_query_per_batch(monkeypatch):
    monkeypatch.setattr(verify, "BATCH", 1000)
    seed_bulk(3000)
    with CaptureQueriesContext(connection) as queries:
        result, calls = python_calls(verify_chain)
    assert result.ok and result.checked == result.total == 3000
    # Python runs per batch (Django's cursor wrapper, the driver's Python parts: ~100 calls a query), never per
    # event. The row-at-a-time walk this replaced called chain.payload and resumed a generator for every event:
    # over 6,000 calls here.
    assert calls < 3000 / 3, calls
    # A count, then one query per 1,000 ids: O(events / batch), not O(events).
    assert len(queries) == 1 + 3000 // 1000, [q["sql"][:60] for q in queries.captured_queries]


def test_the_database_rendered_text_hashes_as_recorded(monkeypatch):
    """Every event passes the hot loop on the text the database renders, without the per-row fallback:
    integers, a missing actor, non-ASCII text, control characters and JSON escapes read as chain.payload reads."""
    monkeypatch.setattr(verify, "BATCH", 4)
    person = UserFactory(username="zoë-人", roles=["admin"])
    audit.record(action="user.updated", actor=person, changes={"email": ["a@x.test", "b\u00e9@x.test"]})
    audit.record(action="login.failed", actor=None, actor_name="mallory\x01\t\n'\"\\ 🦜", detail={"why": "x\ny"})
    audit.record(action="job.done", actor=None, actor_name="", target_type="jobs.job", target_id="9" * 64)
    audit.record(action="odd", actor=None, actor_name="\u202eevil", target_name="x" * 255, detail={"n": 2**62})
    seed(5)

    def fallback(event_id):
        raise AssertionError(f"event {event_id} needed the per-row fallback: the database's text differs")

    monkeypatch.setattr(verify, "_hash_as_stored", fallback)
    result = verify_chain()
    assert result.ok and result.checked == result.total == AuditEvent.objects.count() >= 9, result.summary()


@pytest.mark.parametrize("target", [3, 4, 5])  # the last of a page, the first of the next, inside it
def test_an_edit_at_a_batch_edge_is_named_by_position(monkeypatch, target):
    monkeypatch.setattr(verify, "BATCH", 3)
    seed(7)
    with Tamper() as t:
        t.sql("UPDATE audit_auditevent SET detail = '{\"i\":99}' WHERE id = %s", [target])
    result = verify_chain()
    assert (result.broken_position, result.broken_id) == (target, target)
    assert "edited" in result.reason


def test_a_deletion_at_a_batch_edge_is_named_by_position(monkeypatch):
    monkeypatch.setattr(verify, "BATCH", 3)
    seed(7)
    with Tamper() as t:
        t.sql("DELETE FROM audit_auditevent WHERE id = 4")  # the first event of the second page
    result = verify_chain()
    assert (result.broken_position, result.broken_id) == (4, 5)
    assert "events 4..4 are missing" in result.reason


def test_a_removed_tail_shows_in_the_count_and_a_rewritten_link_at_its_event(monkeypatch):
    monkeypatch.setattr(verify, "BATCH", 2)
    events = seed(6)
    with Tamper() as t:
        t.sql("UPDATE audit_auditevent SET prev_hash = %s WHERE id = 5", [events[0].hash])
    result = verify_chain()
    assert (result.broken_position, result.broken_id) == (5, 5) and "link" in result.reason
    # Verifying after a checkpoint-like start: positions count from there.
    result = verify_chain(after_id=2, after_hash=events[1].hash)
    assert (result.broken_position, result.broken_id) == (3, 5) and result.total == 4


def test_events_appended_during_a_walk_are_left_for_the_next_one(monkeypatch):
    monkeypatch.setattr(verify, "BATCH", 2)
    seed(4)
    walk = verify._batches

    def appending(*args):
        for rows in walk(*args):
            yield rows
            seed(1)  # someone acts while the verifier reads

    monkeypatch.setattr(verify, "_batches", appending)
    result = verify_chain()
    assert result.ok and result.checked == result.total == 4, result.summary()
    monkeypatch.setattr(verify, "_batches", walk)
    assert verify_chain().checked == AuditEvent.objects.count() == 6


def test_a_deleted_page_of_events_is_named_by_position(monkeypatch):
    monkeypatch.setattr(verify, "BATCH", 3)
    seed(8)
    with Tamper() as t:
        t.sql("DELETE FROM audit_auditevent WHERE id BETWEEN 4 AND 6")  # the whole second page comes back empty
    result = verify_chain()
    assert (result.broken_position, result.broken_id) == (4, 7)
    assert "events 4..6 are missing" in result.reason
