"""The audit page verifies only what no verification has passed yet: at 20k events without a checkpoint, once
caught up a view walks the remembered head alone in a few queries; an edit after the head is found by the next view."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audit import chain, incremental
from audit.incremental import view_verification
from audit.verify import verify_chain
from tests.audit.tampering import Tamper
from tests.audit.test_verify_batches import seed_bulk

pytestmark = [pytest.mark.both_databases, pytest.mark.django_db]


@pytest.fixture(autouse=True)
def _no_remembered_verification():
    cache.delete_many([incremental.HEAD_KEY, incremental.WALK_KEY])
    yield
    cache.delete_many([incremental.HEAD_KEY, incremental.WALK_KEY])


def append_bulk(first_id: int, n: int, prev: str) -> None:
    """n more valid events after `first_id - 1`, whose hash is `prev` (explicit ids, as seed_bulk)."""
    columns = (*chain.HASHED_COLUMNS, "hash")
    sql = f"INSERT INTO audit_auditevent ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})"  # noqa: S608
    rows = []
    for event_id in range(first_id, first_id + n):
        row = [event_id, 1_700_000_000_000_000 + event_id, None, "system", "[]", "bulk.event", "system", "success"]
        row += ["", "", "", "{}", f'{{"i":{event_id}}}', "", "", "0" * 32, prev]
        prev = chain.event_hash(row)
        rows.append((*row, prev))
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)


def test_a_second_view_at_20k_events_walks_only_the_head_and_the_next_finds_a_newer_edit():
    seed_bulk(20_000)
    assert incremental.VIEW_LIMIT == 10_000
    first = view_verification(None)  # the first 10k; the rest is left to the periodic task, or the next view
    assert first["ok"] and first["checked"] == 10_000 and first["pending"] == 10_000
    caught_up = view_verification(None)
    assert caught_up["ok"] and caught_up["pending"] == 0 and caught_up["verified_through"] == 20_000

    with CaptureQueriesContext(connection) as queries:
        second = view_verification(None)
    assert second["ok"] and second["checked"] == 1 and second["pending"] == 0  # the head itself, no older event
    assert len(queries) <= 4, [q["sql"] for q in queries]

    head_hash = cache.get(incremental.HEAD_KEY)["hash"]
    append_bulk(20_001, 3, head_hash)
    with Tamper() as tamper:
        tamper.sql("UPDATE audit_auditevent SET actor_name = 'mallory' WHERE id = %s", [20_002])
    third = view_verification(None)
    assert not third["ok"] and third["broken_id"] == 20_002
    assert third["broken_position"] == 20_002  # counted from the first event, as a full walk names it
    assert "edited" in third["reason"]


def test_an_edit_before_the_remembered_head_is_left_to_the_full_walk_which_the_page_then_shows():
    seed_bulk(300)
    assert view_verification(None)["ok"]
    with Tamper() as tamper:
        tamper.sql("UPDATE audit_auditevent SET action = 'forged' WHERE id = %s", [120])
    assert view_verification(None)["ok"]  # not this view's to find: it walked the head only

    incremental.remember_walk(verify_chain(), source="audit_verify")
    shown = view_verification(None)
    assert not shown["ok"] and shown["broken_id"] == 120 and shown["broken_position"] == 120
    assert shown["walk"]["source"] == "audit_verify" and not shown["walk"]["ok"]


def test_a_view_verifies_at_most_its_limit_and_says_how_many_wait():
    seed_bulk(1_000)
    first = view_verification(None, limit=400)
    assert first["ok"] and first["checked"] == 400 and first["pending"] == 600
    second = view_verification(None, limit=400)  # resumes where the first stopped (its head re-walked)
    assert second["ok"] and second["after_id"] == 399 and second["checked"] == 401 and second["pending"] == 200


def test_a_break_the_full_walk_found_reads_in_chinese_on_the_page(client, auditor):
    """The page words what the walk found in the reader's language: the position, the event and why (the command
    and /metrics keep the English summary)."""
    seed_bulk(300)
    with Tamper() as tamper:
        tamper.sql("UPDATE audit_auditevent SET action = 'forged' WHERE id = %s", [120])
    incremental.remember_walk(verify_chain(), source="audit_verify")
    client.force_login(auditor)
    page = client.get("/audit/", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "内容与其哈希不符（该事件被篡改）" in page  # noqa: RUF001 - the catalog's full-width brackets
    assert "链在位置 120（事件 120）处断开" in page  # noqa: RUF001
    assert "content does not match" not in page and "chain broken at position" not in page
