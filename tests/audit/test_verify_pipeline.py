"""On PostgreSQL the verifier sends each batch's query before it hashes the batch before it, so the server's
time reading and rendering rows overlaps Python's time hashing them instead of adding to it."""

from __future__ import annotations

import time

import pytest
from django.db import connection

from audit import verify
from audit.verify import verify_chain
from tests.audit.tampering import Tamper
from tests.audit.test_verify_batches import seed_bulk
from tests.conftest import need

pytestmark = pytest.mark.django_db

SERVER_S = CLIENT_S = 0.3  # per batch: sleeps, so the machine's load does not decide the outcome
BATCHES = 5


def slow_walk(monkeypatch) -> None:
    """Every batch query waits SERVER_S in the server before its first row, and the walk spends CLIENT_S on each
    batch after it arrives (as hashing a large batch would)."""
    need(connection.vendor == "postgresql", "PostgreSQL (DATABASE_URL): the pipelined walk is PostgreSQL's")
    sleep_first = f"WHERE (SELECT pg_sleep({SERVER_S})) IS NOT NULL AND"
    select_sql = verify._select_sql
    monkeypatch.setattr(verify, "_select_sql", lambda: select_sql().replace("WHERE", sleep_first))
    batches = verify._batches

    def hashing_slowly(*args):
        for rows in batches(*args):
            yield rows
            time.sleep(CLIENT_S)  # the walk asks for the next batch only after this

    monkeypatch.setattr(verify, "_batches", hashing_slowly)
    monkeypatch.setattr(verify, "BATCH", 10)


def test_the_server_reads_the_next_batch_while_the_walk_hashes_this_one(monkeypatch):
    slow_walk(monkeypatch)
    seed_bulk(10 * BATCHES)
    start = time.perf_counter()
    result = verify_chain()
    elapsed = time.perf_counter() - start
    assert result.ok and result.checked == 10 * BATCHES, result.summary()
    # One after the other: BATCHES * (SERVER_S + CLIENT_S) = 3.0 s. Overlapped: the first query, then one
    # CLIENT_S per batch (each next query runs during it) = 1.8 s.
    assert elapsed < BATCHES * (SERVER_S + CLIENT_S) * 0.8, f"{elapsed:.2f} s: the server waited for the hashing"


@pytest.mark.parametrize("target", [10, 11, 35])  # the last of a batch, the first of the next, a later one
def test_a_pipelined_walk_stops_at_an_edit_and_leaves_the_connection_usable(monkeypatch, target):
    """The walk stops with the next batch's query still in flight; its result is discarded, not left to the
    connection's next query."""
    need(connection.vendor == "postgresql", "PostgreSQL (DATABASE_URL): the pipelined walk is PostgreSQL's")
    monkeypatch.setattr(verify, "BATCH", 10)
    seed_bulk(50)
    with Tamper() as t:
        t.sql("UPDATE audit_auditevent SET actor_name = 'mallory' WHERE id = %s", [target])
    result = verify_chain()
    assert (result.broken_position, result.broken_id) == (target, target) and "edited" in result.reason
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM audit_auditevent")
        assert cursor.fetchone() == (50,)
