"""The gateway's ORM lookups (a uvicorn process, no Django request signals) recover from a dropped database
connection: each pool thread's kept connection is health-checked before a lookup, as Django does per request."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection, connections

from deployments.gateway.app import _in_thread


def _backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def _terminate(pid: int) -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    finally:
        connection.close()


@pytest.mark.django_db(transaction=True)
def test_a_lookup_after_postgresql_dropped_the_threads_connection_succeeds(monkeypatch):
    if connection.vendor != "postgresql":
        pytest.fail("needs PostgreSQL (DATABASE_URL)")
    # The gateway's own setting (kept connections); the suite's default of 0 would close each after use.
    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", 60)

    async def scenario() -> tuple[int, int, int]:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=1))
        first = await _in_thread(_backend_pid)
        kept = await _in_thread(_backend_pid)
        # A restart of PostgreSQL, as the pool thread sees it: its backend ends, from another thread's connection.
        other = ThreadPoolExecutor(max_workers=1)
        await asyncio.get_running_loop().run_in_executor(other, _terminate, first)
        other.shutdown()
        try:
            return first, kept, await _in_thread(_backend_pid)
        finally:
            await _in_thread(lambda: connection.close())

    first, kept, after = asyncio.run(scenario())
    assert kept == first  # the connection is kept between lookups (no connect per request)
    assert after != first  # a new connection, no error
