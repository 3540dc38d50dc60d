"""The inference log's flushers (the gateway's sealing process and beat's backstop), a gateway killed right after
queueing, and each call's `model_inference` span."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import redis
from django.conf import settings

from deployments.gateway import records
from deployments.gateway.verify import verify_inference_log
from deployments.models import InferenceRecord
from tests.conftest import ROOT
from tests.deployments.gateway.records_support import (
    make_record,
    queue,
    queued,
    stream,  # noqa: F401  (the fixture every test here uses)
)

pytestmark = pytest.mark.usefixtures("stream")

# A gateway process that queues its calls' records, then dies (SIGKILL) before any flush could run.
QUEUE_AND_DIE = """
import asyncio, os, signal, sys
import django
django.setup()
import redis.asyncio as aioredis
from django.conf import settings
from deployments.gateway import records
from tests.deployments.gateway.records_support import make_record

async def main():
    client = aioredis.Redis.from_url(settings.REDIS_URL)
    for i in range(int(sys.argv[1])):
        await records.submit(client, make_record(i))
    print("queued", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


@pytest.mark.django_db
def test_records_of_a_gateway_killed_before_its_flush_are_all_sealed_by_the_next_one():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "console.settings", "DATA_DIR": str(settings.DATA_DIR)}
    env["REDIS_URL"] = settings.REDIS_URL
    done = subprocess.run(
        [sys.executable, "-c", QUEUE_AND_DIE, "25"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == -signal.SIGKILL and "queued" in done.stdout, done.stderr[-2000:]
    assert queued() == 25
    assert records.flush() == 25
    assert sorted(InferenceRecord.objects.values_list("request_id", flat=True)) == [f"req-{i:06d}" for i in range(25)]
    assert verify_inference_log().ok


def _stored() -> int:
    try:
        return InferenceRecord.objects.count()
    finally:
        from django.db import connection

        connection.close()


async def _until_stored(expected: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while await asyncio.to_thread(_stored) < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return await asyncio.to_thread(_stored)


def _sealer_env(redis_url: str) -> dict:
    from tests.conftest import _test_database_url

    return {**os.environ, "DATABASE_URL": _test_database_url(), "REDIS_URL": redis_url}


@pytest.fixture
def own_stream(settings, redis_url):
    """A Redis database of these tests' own for the record stream: the session's gateway (tests/deployments/gateway
    conftest) keeps a sealing process of its own on the suite's database, which would seal these records too."""
    base, _, number = redis_url.rpartition("/")
    own = f"{base}/{(int(number or 0) + 8) % 16}"
    settings.REDIS_URL = own
    client = redis.Redis.from_url(own)
    keys = (records.STREAM, records.REJECTED_STREAM, records.LOCK)
    client.delete(*keys)
    yield own
    client.delete(*keys)
    client.close()


@pytest.mark.django_db(transaction=True)
def test_the_gateway_flusher_seals_at_start_on_its_interval_and_once_more_when_stopped(settings, own_stream):
    """Transactional: the sealing process writes through its own connection."""
    env = _sealer_env(own_stream)
    queue([make_record(i) for i in range(3)])  # left by a previous gateway process

    async def every_tenth_of_a_second() -> list[int]:
        settings.GATEWAY_FLUSH_SECONDS = 0.1
        stop = asyncio.Event()
        task = asyncio.create_task(records.flusher(stop, env=env))
        seen = [await _until_stored(3)]  # at once on start
        queue([make_record(i) for i in range(3, 5)])  # calls while it runs
        seen.append(await _until_stored(5))
        stop.set()
        await asyncio.wait_for(task, timeout=40)
        return seen

    async def every_hour() -> list[int]:
        settings.GATEWAY_FLUSH_SECONDS = 3600  # only the start and the stop flush
        queue([make_record(5)])
        stop = asyncio.Event()
        task = asyncio.create_task(records.flusher(stop, env=env))
        seen = [await _until_stored(6)]  # the start flush: the process is up and waits an hour now
        queue([make_record(6)])
        await asyncio.sleep(1)
        seen.append(await asyncio.to_thread(_stored))
        stop.set()
        await asyncio.wait_for(task, timeout=40)
        return [*seen, await asyncio.to_thread(_stored)]

    assert asyncio.run(every_tenth_of_a_second()) == [3, 5]
    assert asyncio.run(every_hour()) == [6, 6, 7]
    assert queued() == 0


# A gateway that starts its sealing process, queues records and dies by SIGKILL (no shutdown, no stop signal).
START_SEALER_AND_DIE = """
import os, signal, subprocess, sys
import django
django.setup()
from deployments.gateway import records
from tests.deployments.gateway.records_support import queue, make_record
queue([make_record(i) for i in range(4)])
sealer = subprocess.Popen(records.sealer_command(), stdin=subprocess.DEVNULL)
print("started", sealer.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.django_db(transaction=True)
def test_the_sealing_process_of_a_killed_gateway_flushes_once_more_and_exits(own_stream):
    env = {**_sealer_env(own_stream), "DJANGO_SETTINGS_MODULE": "console.settings", "GATEWAY_FLUSH_SECONDS": "3600"}
    env["DATA_DIR"] = str(settings.DATA_DIR)
    done = subprocess.run(
        [sys.executable, "-c", START_SEALER_AND_DIE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == -signal.SIGKILL and "started" in done.stdout, done.stderr[-2000:]
    sealer = int(done.stdout.split()[-1])
    assert asyncio.run(_until_stored(4)) == 4
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _alive(sealer):
        time.sleep(0.2)
    assert not _alive(sealer), "the sealing process outlived its gateway"
    assert queued() == 0 and verify_inference_log().ok


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # reparented to init (or a subreaper) and reaped, or a zombie: gone


@pytest.mark.django_db
def test_beat_flushes_what_no_gateway_flushed(settings):
    from workers.tasks import inference_log_flush

    entry = settings.CELERY_BEAT_SCHEDULE["inference-log-flush"]
    assert entry == {"task": "workers.inference_log_flush", "schedule": 60}
    assert inference_log_flush.name == "workers.inference_log_flush"
    queue([make_record(i) for i in range(7)])
    assert inference_log_flush() == 7 and queued() == 0


@pytest.fixture
def spans():
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from audit import telemetry

    telemetry.configure(force=True)  # as OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_ENABLED would
    exporter = InMemorySpanExporter()
    trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.clear()


def test_each_call_is_a_model_inference_span_with_the_record_attributes_and_no_text(spans):
    record = make_record(
        42, prompt={"messages": [{"role": "user", "content": "secret prompt"}]}, completion="secret answer"
    )
    record.update(adapter="mine", team_id=4, status=429, error="over quota: tpm")
    records.record_span(record)
    (span,) = [s for s in spans.get_finished_spans() if s.name == "model_inference"]
    attributes = dict(span.attributes)
    assert attributes["gen_ai.request.model"] == "tiny" and attributes["gen_ai.operation.name"] == "chat"
    assert (attributes["gen_ai.usage.input_tokens"], attributes["gen_ai.usage.output_tokens"]) == (10, 29)
    assert attributes["http.response.status_code"] == 429 and attributes["error.type"] == "429"
    assert attributes["llmdeploy.request_id"] == "req-000042" and attributes["llmdeploy.owner"] == "erin-engineer"
    assert (attributes["llmdeploy.key.prefix"], attributes["llmdeploy.team.id"]) == ("llk_abcd", 4)
    assert (attributes["llmdeploy.deployment.id"], attributes["llmdeploy.adapter"]) == (3, "mine")
    assert attributes["llmdeploy.ttft_ms"] == 12.5 and attributes["llmdeploy.duration_ms"] == 103.25
    assert not any("secret" in str(value) for value in attributes.values())
    # In the record's trace, timed as the call was.
    assert format(span.context.trace_id, "032x") == record["trace_id"]
    started = datetime.fromisoformat(record["started_at"])
    assert span.start_time == int(started.timestamp() * 1_000_000) * 1000
    assert span.end_time - span.start_time == 103_250_000
