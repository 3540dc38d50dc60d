"""The chain: append-only in the database, and the verifier finds any tampering at its exact place."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction

import audit
from audit import guard
from audit.checkpoints import checkpoint_create
from audit.models import AuditEvent
from audit.verify import verify_chain, verify_checkpoints
from tests.audit.tampering import Tamper

pytestmark = [pytest.mark.both_databases, pytest.mark.django_db]


def seed(n: int = 5) -> list[AuditEvent]:
    return [audit.record(action="test.event", actor=None, actor_name=f"probe-{i}", detail={"i": i}) for i in range(n)]


def test_update_and_delete_are_refused_by_the_database():
    seed(2)
    statements = [
        lambda: AuditEvent.objects.filter(id=1).update(actor_name="mallory"),
        lambda: AuditEvent.objects.filter(id=1).delete(),
        lambda: connection.cursor().execute("UPDATE audit_auditevent SET action = 'x' WHERE id = 2"),
        lambda: connection.cursor().execute("DELETE FROM audit_auditevent"),
    ]
    if connection.vendor == "postgresql":
        statements.append(lambda: connection.cursor().execute("TRUNCATE audit_auditevent"))
    for statement in statements:
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
            statement()
    assert AuditEvent.objects.filter(actor_name__startswith="probe-").count() == 2
    assert guard.installed(connection)


def test_intact_chain_verifies(capsys):
    seed(5)
    result = verify_chain()
    assert result.ok and result.checked == result.total == AuditEvent.objects.count()
    call_command("audit_verify")
    assert f"{result.total}/{result.total} events valid" in capsys.readouterr().out


def broken(capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        call_command("audit_verify")
    assert exit_info.value.code == 1
    return capsys.readouterr().out


def test_an_edited_event_is_named_by_position(capsys):
    events = seed(5)
    with Tamper() as t:
        t.sql("UPDATE audit_auditevent SET actor_name = 'mallory' WHERE id = %s", [events[2].id])
    result = verify_chain()
    assert (result.broken_position, result.broken_id) == (events[2].id, events[2].id)
    assert "edited" in result.reason
    assert f"position {events[2].id} (event id {events[2].id})" in broken(capsys)


def test_a_deleted_event_is_named_by_position(capsys):
    events = seed(5)
    with Tamper() as t:
        t.sql("DELETE FROM audit_auditevent WHERE id = %s", [events[2].id])
    result = verify_chain()
    assert result.broken_id == events[3].id and result.broken_position == events[2].id
    assert f"events {events[2].id}..{events[2].id} are missing" in result.reason
    assert "chain broken" in broken(capsys)


def test_swapped_events_are_found_at_the_first_moved_position():
    events = seed(5)
    a, b = events[1].id, events[2].id
    with Tamper() as t:
        t.sql(f"UPDATE audit_auditevent SET id = -1 WHERE id = {a}")  # noqa: S608
        t.sql(f"UPDATE audit_auditevent SET id = {a} WHERE id = {b}")  # noqa: S608
        t.sql(f"UPDATE audit_auditevent SET id = {b} WHERE id = -1")  # noqa: S608
    result = verify_chain()
    # The rows moved whole (every column travelled with the id): the first moved position breaks.
    assert not result.ok and result.broken_id == a and result.broken_position == a


def test_a_rewritten_history_is_caught_by_a_signed_checkpoint():
    events = seed(4)
    checkpoint_create()
    # An attacker without the checkpoint key edits event 2 and recomputes every hash after it.
    from audit import chain

    with Tamper() as t:
        t.sql("UPDATE audit_auditevent SET actor_name = 'mallory' WHERE id = %s", [events[1].id])
        prev = AuditEvent.objects.get(id=events[0].id).hash
        for event in AuditEvent.objects.filter(id__gte=events[1].id).order_by("id"):
            event.prev_hash = prev
            event.hash = chain.event_hash([getattr(event, c) for c in chain.HASHED_COLUMNS])
            t.sql(
                "UPDATE audit_auditevent SET prev_hash = %s, hash = %s WHERE id = %s",
                [event.prev_hash, event.hash, event.id],
            )
            prev = event.hash
    assert verify_chain().ok  # the chain alone looks fine...
    assert "history rewritten" in verify_checkpoints()  # ...but the signed head no longer matches


def test_verification_starts_from_a_checkpoint(capsys, tmp_path):
    seed(3)
    checkpoint = checkpoint_create()
    seed(2)
    call_command("audit_verify", "--from-checkpoint", str(checkpoint.id))
    assert f"2/2 events valid after event {checkpoint.last_event_id}" in capsys.readouterr().out
    exported = tmp_path / "checkpoints.jsonl"
    call_command("audit_checkpoint", "--export", stdout=exported.open("w"))
    call_command("audit_verify", "--checkpoint-file", str(exported))
    assert "events valid after event" in capsys.readouterr().out


def test_a_forged_checkpoint_is_refused(tmp_path, capsys):
    import json

    seed(2)
    checkpoint = checkpoint_create().as_dict()
    forged = tmp_path / "forged.jsonl"
    forged.write_text(json.dumps({**checkpoint, "count": checkpoint["count"] + 1}) + "\n")
    with pytest.raises(SystemExit):
        call_command("audit_verify", "--checkpoint-file", str(forged))
    assert "signature is invalid" in capsys.readouterr().out


def test_flush_keeps_the_guard(transactional_db):
    seed(1)
    call_command("flush", interactive=False, verbosity=0)
    assert AuditEvent.objects.count() == 0
    assert guard.installed(connection)


def test_the_product_ships_no_command_that_lifts_the_guard(transactional_db):
    """Outside the test suite `flush` is Django's own: the guard refuses to empty the audit tables."""
    from django.core.management.commands.flush import Command as DjangoFlush

    seed(1)
    assert not (Path(audit.__file__).parent / "management" / "commands" / "flush.py").exists()
    with pytest.raises((CommandError, DatabaseError)):
        call_command(DjangoFlush(), interactive=False, verbosity=0)
    assert AuditEvent.objects.count() == 1 and guard.installed(connection)


def test_beat_signs_a_checkpoint_periodically_when_the_chain_grew(settings):
    from audit.tasks import checkpoint

    entry = settings.CELERY_BEAT_SCHEDULE["audit-checkpoint"]
    assert entry["task"] == "audit.checkpoint" and entry["schedule"] == settings.AUDIT_CHECKPOINT_SECONDS
    seed(2)
    first = checkpoint()
    assert first is not None
    assert checkpoint() is None  # nothing new to sign
    seed(1)
    assert checkpoint() > first
    assert verify_checkpoints() is None
