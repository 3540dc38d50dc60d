"""Helpers for the inference log's tests: records as the gateway makes them, the Redis stream emptied around each
test, and tampering with the log's tables as a database owner could."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import pytest
import redis
from django.conf import settings
from django.core.management import call_command
from django.db import connection

from audit import guard
from deployments.gateway import records


def make_record(i: int, **changes) -> dict:
    """The dict the gateway's app submits for one call (started_at as ISO-8601 text)."""
    started = datetime(2026, 12, 4, 9, 0, tzinfo=UTC) + timedelta(milliseconds=37 * i)
    return {
        "request_id": f"req-{i:06d}",
        "trace_id": f"{i:032x}",
        "key_id": 7,
        "key_prefix": "llk_abcd",
        "owner": "erin-engineer",
        "team_id": None,
        "deployment_id": 3,
        "deployment_name": "tiny",
        "adapter": "",
        "route": "openai.chat",
        "stream": bool(i % 2),
        "started_at": started.isoformat(),
        "status": 200,
        "error": "",
        "prompt_tokens": 10 + i % 7,
        "completion_tokens": 20 + i % 11,
        "ttft_ms": 12.5 + i % 3,
        "duration_ms": 101.25 + i % 5,
        "client_ip": "10.0.0.9",
        "replica": "http://10.0.0.5:8080",
        "prompt": None,
        "completion": "",
        **changes,
    }


def queue(entries: list[dict]) -> None:
    """XADD records as submit() does, in one round trip (the Show's 10,000 calls)."""
    client = records._redis()
    pipe = client.pipeline(transaction=False)
    for record in entries:
        pipe.xadd(records.STREAM, {records.FIELD: json.dumps(record, separators=(",", ":"))})
    pipe.execute()


def queued() -> int:
    return records._redis().xlen(records.STREAM)


@pytest.fixture
def stream():
    """An empty record stream (and no flush lock) before and after the test."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    keys = (records.STREAM, records.REJECTED_STREAM, records.LOCK)
    client.delete(*keys)
    yield client
    client.delete(*keys)
    client.close()


def verify_output(limit: int = 20) -> tuple[int, str]:
    """Run `manage.py inference_verify`: (exit status, output)."""
    out = io.StringIO()
    try:
        call_command("inference_verify", "--limit", str(limit), stdout=out)
    except SystemExit as exit_info:
        return int(exit_info.code), out.getvalue()
    return 0, out.getvalue()


class InferenceTamper:
    """Bypass the append-only guard of the inference log for the block, as the owning role could (PostgreSQL:
    disable the tables' user triggers; SQLite: drop the triggers), then restore it."""

    def __enter__(self):
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                for table in guard.INFERENCE_TABLES:
                    cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        else:
            guard.uninstall(connection)
        return self

    def sql(self, statement: str, params=()) -> None:
        with connection.cursor() as cursor:
            cursor.execute(statement, params)

    def __exit__(self, *exc):
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                for table in guard.INFERENCE_TABLES:
                    cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
        else:
            guard.install(connection)
        assert guard.installed(connection)
