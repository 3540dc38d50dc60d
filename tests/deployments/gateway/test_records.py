"""The inference log: records queued in Redis, sealed into the database in batches whose digests go to the audit
chain, append-only, and checked by `inference_verify`, which names a changed or removed record at its position."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import redis.asyncio as aioredis
from django.conf import settings
from django.db import DatabaseError, connection, transaction

from audit import guard
from audit.models import AuditEvent
from deployments.gateway import records
from deployments.gateway.sealing import PLACE_FIELDS, RECORD_FIELDS, batch_digest, record_hash
from deployments.gateway.verify import verify_inference_log
from deployments.models import InferenceBatch, InferenceRecord, UsageDay
from tests.deployments.gateway.records_support import (
    InferenceTamper,
    make_record,
    queue,
    queued,
    stream,  # noqa: F401  (the fixture every test here uses)
    verify_output,
)

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("stream")]


async def _submit(entries: list[dict]) -> None:
    client = aioredis.Redis.from_url(settings.REDIS_URL)
    try:
        for record in entries:
            await records.submit(client, record)
    finally:
        await client.aclose()


def test_the_hash_covers_every_stored_field_but_the_place():
    names = {field.name for field in InferenceRecord._meta.concrete_fields}
    assert set(RECORD_FIELDS) | set(PLACE_FIELDS) == names and len(RECORD_FIELDS) == len(set(RECORD_FIELDS))


def test_submitted_records_wait_in_redis_until_a_flush_seals_them_with_an_audit_event():
    asyncio.run(_submit([make_record(i) for i in range(3)]))
    assert queued() == 3
    assert records.flush() == 3
    assert queued() == 0

    batch = InferenceBatch.objects.get()
    stored = list(InferenceRecord.objects.order_by("position"))
    assert [(r.batch_id, r.position, r.request_id) for r in stored] == [
        (batch.id, 0, "req-000000"),
        (batch.id, 1, "req-000001"),
        (batch.id, 2, "req-000002"),
    ]
    assert batch.count == 3 and batch.hashes == [record_hash(r.__dict__) for r in stored]
    assert batch.digest == batch_digest(batch.hashes)
    event = AuditEvent.objects.get(pk=batch.audit_event_id)
    assert (event.action, event.actor_name, event.target_id) == ("inference.sealed", "gateway", str(batch.id))
    assert event.details == {
        "batch": batch.id,
        "count": 3,
        "digest": batch.digest,
        "first_request_id": "req-000000",
        "last_request_id": "req-000002",
    }
    # Usage is added in the same transaction.
    assert sum(UsageDay.objects.values_list("requests", flat=True)) == 3


def test_a_flush_that_committed_but_died_before_clearing_the_stream_is_not_stored_twice(monkeypatch):
    queue([make_record(i) for i in range(4)])

    def crash(self):
        raise ConnectionError("the gateway died here")

    import redis.client

    with monkeypatch.context() as patch:
        patch.setattr(redis.client.Pipeline, "execute", crash)
        with pytest.raises(ConnectionError):
            records.flush()
    assert InferenceRecord.objects.count() == 4 and queued() == 4  # committed, still queued
    queue([make_record(4)])
    assert records.flush() == 1  # only the new one
    assert queued() == 0
    assert list(InferenceBatch.objects.values_list("count", flat=True)) == [4, 1]
    assert AuditEvent.objects.filter(action="inference.sealed").count() == 2
    assert records.flush() == 0 and InferenceBatch.objects.count() == 2  # nothing queued: no empty batch
    assert verify_inference_log().ok


def test_a_flush_that_fails_inside_its_transaction_stores_nothing_and_keeps_the_records(monkeypatch):
    queue([make_record(i) for i in range(5)])
    from deployments.gateway import usage

    def down(batch):
        raise DatabaseError("the database went away mid-batch")

    with monkeypatch.context() as patch:
        patch.setattr(usage, "add_usage", down)
        with pytest.raises(DatabaseError):
            records.flush()
    assert not InferenceRecord.objects.exists() and not InferenceBatch.objects.exists()
    assert not AuditEvent.objects.filter(action="inference.sealed").exists()
    assert queued() == 5
    assert records.flush() == 5 and queued() == 0


def test_one_flusher_at_a_time():
    client = records._redis()
    queue([make_record(0)])
    client.set(records.LOCK, "another-flusher")
    assert records.flush() == 0 and queued() == 1
    client.delete(records.LOCK)
    assert records.flush() == 1


def test_an_entry_that_is_no_record_is_set_aside_and_does_not_block_the_others():
    client = records._redis()
    queue([make_record(0)])
    client.xadd(records.STREAM, {records.FIELD: b"{not json"})
    client.xadd(records.STREAM, {"something": b"else"})
    queue([make_record(1)])
    assert records.flush() == 2 and queued() == 0
    assert client.xlen(records.REJECTED_STREAM) == 2
    assert list(InferenceRecord.objects.values_list("position", "request_id")) == [(0, "req-000000"), (1, "req-000001")]


def test_a_record_the_database_refuses_is_set_aside_and_the_others_are_sealed(monkeypatch):
    """normalise() should leave no such value; if one slips through, it must not hold the whole log back."""
    from tests.conftest import need

    need(connection.vendor == "postgresql", "PostgreSQL (DATABASE_URL): SQLite stores an out-of-range integer")
    real = records.normalise

    def with_a_bad_value(record, *, received):
        values = real(record, received=received)
        if values["request_id"] == "req-000001":
            values["status"] = 10**6  # beyond the smallint column
        return values

    monkeypatch.setattr(records, "normalise", with_a_bad_value)
    queue([make_record(i) for i in range(3)])
    assert records.flush() == 2 and queued() == 0
    assert list(InferenceRecord.objects.values_list("position", "request_id")) == [(0, "req-000000"), (1, "req-000002")]
    (entry,) = records._redis().xrange(records.REJECTED_STREAM)
    assert b"req-000001" in entry[1][b"record"] and entry[1][b"reason"].startswith(b"refused by the database")
    assert verify_inference_log().ok


def test_batches_hold_at_most_the_batch_size_and_flush_pending_drains(settings):
    settings.GATEWAY_BATCH_MAX = 4
    queue([make_record(i) for i in range(10)])
    assert records.flush() == 4
    assert records.flush_pending() == 6
    assert list(InferenceBatch.objects.values_list("count", flat=True)) == [4, 4, 2]


@pytest.mark.both_databases
def test_what_a_caller_sent_is_stored_and_reads_back_with_its_sealed_hash():
    """Values the database would refuse or give back otherwise (NUL, a lone surrogate, an over-long error, an IPv6
    address in another spelling, a naive time, whole and huge floats in the prompt) are made storable first, so the
    batch goes in and every record verifies on PostgreSQL and SQLite alike."""
    odd = make_record(
        1,
        error="bad\x00byte " + "x" * 400,
        client_ip="2001:DB8:0:0::1",
        started_at="2026-12-04T10:00:00.123456",
        prompt={"messages": [{"role": "user", "content": "hi\x00 \ud800"}], "n": 2.0, "big": 1e20, "t": 0.1},
        completion="ok\x00",
        ttft_ms=None,
        duration_ms=7,
        stream="false",
        status=99999,
        prompt_tokens=-3,
    )
    mapped, zoned = make_record(3, client_ip="::ffff:1.2.3.4"), make_record(4, client_ip="fe80::1%eth0")
    queue([make_record(0), odd, {"route": "openai.chat", "status": 200}, mapped, zoned])
    assert records.flush() == 5
    stored = InferenceRecord.objects.get(position=1)
    assert stored.error.startswith("bad\ufffdbyte") and len(stored.error) == 300
    assert stored.client_ip == "2001:db8::1" and stored.started_at.isoformat() == "2026-12-04T10:00:00.123456+00:00"
    assert stored.prompt == {"messages": [{"role": "user", "content": "hi\ufffd ?"}], "n": 2, "big": 10**20, "t": 0.1}
    assert (stored.status, stored.prompt_tokens, stored.stream, stored.ttft_ms) == (32767, 0, False, None)
    assert len(InferenceRecord.objects.get(position=2).request_id) == 32  # a missing request id is given one
    assert InferenceRecord.objects.get(position=4).client_ip == "fe80::1"  # inet stores no zone
    assert verify_inference_log().ok


@pytest.mark.both_databases
def test_the_database_refuses_to_change_or_remove_inference_records_and_batches():
    queue([make_record(i) for i in range(2)])
    records.flush()
    assert guard.installed(connection)
    statements = [
        lambda: InferenceRecord.objects.filter(position=0).update(prompt_tokens=1),
        lambda: InferenceRecord.objects.filter(position=0).delete(),
        lambda: InferenceBatch.objects.update(digest="0" * 64),
        lambda: InferenceBatch.objects.all().delete(),
        lambda: connection.cursor().execute("UPDATE deployments_inferencerecord SET owner = 'mallory'"),
        lambda: connection.cursor().execute("DELETE FROM deployments_inferencebatch"),
    ]
    if connection.vendor == "postgresql":
        statements += [
            lambda: connection.cursor().execute("TRUNCATE deployments_inferencerecord"),
            lambda: connection.cursor().execute("TRUNCATE deployments_inferencebatch"),
        ]
    for statement in statements:
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            statement()
    assert InferenceRecord.objects.filter(owner="erin-engineer").count() == 2 and InferenceBatch.objects.count() == 1
    assert verify_inference_log().ok


def test_show_ten_thousand_calls_recorded_one_edited_and_one_removed_are_found_at_their_positions():
    """The Show: 10,000 calls recorded and sealed; one record edited behind the application's back is named by
    batch, position, record id and request id; so is a removed one."""
    started = time.monotonic()
    queue([make_record(i) for i in range(10_000)])
    assert records.flush_pending(budget_seconds=120) == 10_000
    assert queued() == 0
    assert InferenceRecord.objects.count() == 10_000
    batches = list(InferenceBatch.objects.order_by("id"))
    assert len(batches) == 10_000 // settings.GATEWAY_BATCH_MAX
    assert AuditEvent.objects.filter(action="inference.sealed").count() == len(batches)
    status, out = verify_output()
    assert status == 0 and "10000 inference records in 20 sealed batches valid" in out, out

    victim = InferenceRecord.objects.get(request_id="req-004321")
    assert (victim.batch_id, victim.position) == (batches[8].id, 321)
    with InferenceTamper() as tamper:
        tamper.sql("UPDATE deployments_inferencerecord SET completion_tokens = 1 WHERE id = %s", [victim.id])
    status, out = verify_output()
    assert status == 1, out
    assert (
        f"batch {victim.batch_id}, position 321 (record id {victim.id}, request id req-004321): "
        "content does not match its sealed hash (the record was edited)"
    ) in out

    gone = InferenceRecord.objects.get(request_id="req-007777")
    with InferenceTamper() as tamper:
        tamper.sql("DELETE FROM deployments_inferencerecord WHERE id = %s", [gone.id])
    status, out = verify_output()
    assert status == 1
    assert (
        f"batch {gone.batch_id}, position {gone.position}: no record at this position (the record was removed)" in out
    )
    result = verify_inference_log(limit=5)
    assert [(p.batch_id, p.position) for p in result.problems] == [
        (victim.batch_id, 321),
        (gone.batch_id, gone.position),
    ]
    assert result.records == 10_000 - 2
    assert time.monotonic() - started < 60


def test_a_removed_batch_or_a_rewritten_seal_is_found():
    settings_max = 3
    queue([make_record(i) for i in range(3 * settings_max)])
    records.flush_pending(max_records=settings_max)
    first, middle, last = InferenceBatch.objects.order_by("id")

    # Someone rewrites a record and the hashes of its batch: the digest no longer matches.
    with InferenceTamper() as tamper:
        tamper.sql("UPDATE deployments_inferencerecord SET owner = 'mallory' WHERE batch_id = %s", [first.id])
        forged = [
            record_hash(dict(zip(RECORD_FIELDS, row, strict=True)))
            for row in InferenceRecord.objects.filter(batch_id=first.id)
            .order_by("position")
            .values_list(*RECORD_FIELDS)
        ]
        tamper.sql("UPDATE deployments_inferencebatch SET hashes = %s WHERE id = %s", [json.dumps(forged), first.id])
    assert verify_inference_log().problems[0].reason == "its hashes no longer match its digest (the batch was edited)"

    # ...and the digest too: the audit chain's seal no longer matches.
    with InferenceTamper() as tamper:
        tamper.sql("UPDATE deployments_inferencebatch SET digest = %s WHERE id = %s", [batch_digest(forged), first.id])
    problem = verify_inference_log().problems[0]
    assert (problem.batch_id, problem.reason) == (
        first.id,
        f"audit event {first.audit_event_id} sealed another digest (the batch was edited)",
    )

    # Removing a batch with its records leaves a gap in the batch ids...
    with InferenceTamper() as tamper:
        tamper.sql("DELETE FROM deployments_inferencerecord WHERE batch_id = %s", [middle.id])
        tamper.sql("DELETE FROM deployments_inferencebatch WHERE id = %s", [middle.id])
    described = [p.describe() for p in verify_inference_log(limit=10).problems]
    assert f"batch {middle.id}: batches {middle.id}..{middle.id} are missing (removed)" in described

    # ...the newest leaves none, but its seal is in the audit chain.
    with InferenceTamper() as tamper:
        tamper.sql("DELETE FROM deployments_inferencerecord WHERE batch_id = %s", [last.id])
        tamper.sql("DELETE FROM deployments_inferencebatch WHERE id = %s", [last.id])
    described = [p.describe() for p in verify_inference_log(limit=10).problems]
    assert f"batch {last.id}: sealed by audit event {last.audit_event_id} but missing (removed)" in described


def test_a_record_slipped_in_behind_the_application_is_found():
    queue([make_record(i) for i in range(2)])
    records.flush()
    batch = InferenceBatch.objects.get()
    columns = ", ".join([*RECORD_FIELDS, "batch_id", "position"])
    values = InferenceRecord.objects.values_list(*RECORD_FIELDS).get(position=0)
    with InferenceTamper() as tamper:
        row = [*values[:1], *values[1:]]
        row[0] = "req-forged"
        row[RECORD_FIELDS.index("prompt")] = None
        marks = ", ".join(["%s"] * (len(RECORD_FIELDS) + 2))
        tamper.sql(f"INSERT INTO deployments_inferencerecord ({columns}) VALUES ({marks})", [*row, batch.id, 2])  # noqa: S608
    problem = verify_inference_log().problems[0]
    assert (problem.batch_id, problem.position, problem.request_id) == (batch.id, 2, "req-forged")
    assert "the record was added" in problem.reason


@pytest.mark.django_db(transaction=True)
def test_the_application_role_may_only_add_and_read_the_inference_log(settings):
    """Like the audit tables: the role web, worker and gateway connect as gets INSERT and SELECT on the log's
    tables, so it cannot even reach the guard's triggers (privilege first)."""
    import os

    import psycopg
    from django.core.management import call_command

    from tests.conftest import need

    need(connection.vendor == "postgresql", "PostgreSQL (DATABASE_URL): roles exist only there")
    role, password = f"console_app_inf{os.getpid()}", "app-role-password-for-the-log-test"
    settings.DATABASE_APP_USER, settings.DATABASE_APP_PASSWORD = role, password
    queue([make_record(0)])
    records.flush()
    call_command("audit_db_roles", verbosity=0)
    db = connection.settings_dict
    try:
        with psycopg.connect(
            host=db["HOST"] or "127.0.0.1",
            port=db["PORT"] or 5432,
            dbname=db["NAME"],
            user=role,
            password=password,
            autocommit=True,
        ) as conn:
            # All of them, not only this test's: an earlier test's gateway may have stored some after its end.
            stored = InferenceRecord.objects.count()
            assert stored >= 1
            assert conn.execute("SELECT count(*) FROM deployments_inferencerecord").fetchone() == (stored,)
            for statement in (
                "UPDATE deployments_inferencerecord SET owner = 'mallory'",
                "DELETE FROM deployments_inferencerecord",
                "TRUNCATE deployments_inferencerecord",
                "UPDATE deployments_inferencebatch SET digest = ''",
                "DELETE FROM deployments_inferencebatch",
                "ALTER TABLE deployments_inferencerecord DISABLE TRIGGER USER",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
                    conn.execute(statement)
                assert "append-only" not in str(refused.value), statement
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP OWNED BY {role}")
            cursor.execute(f"DROP ROLE {role}")
    assert verify_inference_log().ok
