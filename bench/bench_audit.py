"""Audit figures: added latency per audited request, verification rate, export memory."""

from __future__ import annotations

import hashlib
import time
import tracemalloc

from bench.common import Figure, p

REQUESTS = 300
CHAIN_EVENTS = 200_000


def _audited_request_overhead() -> Figure:
    from django.test import Client

    import audit.recorder
    from tests.factories import UserFactory

    admin = UserFactory(username="bench-admin", roles=["admin"])
    person = UserFactory(username="bench-person", roles=["engineer"])
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(admin)
    real_record = audit.recorder.record

    def patch(i: int) -> None:
        response = client.patch(
            f"/api/v1/users/{person.pk}/", data={"email": f"p{i}@example.test"}, content_type="application/json"
        )
        assert response.status_code == 200, response.content

    timings: dict[bool, list[float]] = {True: [], False: []}
    for i in range(REQUESTS + 20):
        for recording in (True, False):  # interleaved: drift hits both alike
            audit.recorder.record = real_record if recording else (lambda **kwargs: None)
            start = time.perf_counter()
            patch(i * 2 + recording)
            if i >= 20:
                timings[recording].append(time.perf_counter() - start)
    audit.recorder.record = real_record
    with_ms, without_ms = p(timings[True], 0.95) * 1000, p(timings[False], 0.95) * 1000
    return Figure(
        "audit_added_p95_latency_per_request",
        with_ms - without_ms,
        "ms",
        "<=",
        2,
        f"p95 {with_ms:.2f} ms recorded vs {without_ms:.2f} ms not recorded, same request, same run",
    )


def _seed_chain(count: int) -> None:
    """Bulk-insert a valid chain (what years of use would leave), straight through SQL."""
    from django.db import connection, transaction

    from audit import chain
    from audit.models import AuditEvent

    last = AuditEvent.objects.order_by("-id").values_list("id", "hash").first()
    next_id, prev = (last[0] + 1, last[1]) if last else (1, chain.GENESIS)
    columns = (*chain.HASHED_COLUMNS, "hash")
    sql = f"INSERT INTO audit_auditevent ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})"  # noqa: S608
    now = chain.database_now_us()
    batch = []
    with transaction.atomic():
        for event_id in range(next_id, next_id + count):
            row = [
                event_id,
                now + event_id,
                1,
                "bench-admin",
                '["admin"]',
                "user.updated",
                "api",
                "success",
                "auth.user",
                "2",
                "bench-person",
                '{"email":["a@example.test","b@example.test"]}',
                "{}",
                "127.0.0.1",
                f"req-{event_id:012d}",
                "0" * 32,
                prev,
            ]
            prev = chain.event_hash(row)
            batch.append((*row, prev))
            if len(batch) == 10_000:
                connection.cursor().executemany(sql, batch)
                batch = []
        if batch:
            connection.cursor().executemany(sql, batch)


def _verify_rate() -> list[Figure]:
    from django.db import connection

    from audit import chain
    from audit.models import AuditEvent
    from audit.verify import verify_chain

    _seed_chain(CHAIN_EVENTS)
    total = AuditEvent.objects.count()
    start = time.perf_counter()
    result = verify_chain()
    elapsed = time.perf_counter() - start
    assert result.ok, result.summary()
    # Same run, same bytes: how fast bare SHA-256 gets through the hashed content of every event.
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {', '.join(chain.HASHED_COLUMNS)} FROM audit_auditevent")  # noqa: S608
        payloads = [chain.payload(row) for row in cursor.fetchall()]
    start = time.perf_counter()
    for payload in payloads:
        hashlib.sha256(payload).hexdigest()
    raw_rate = len(payloads) / (time.perf_counter() - start)
    rate = total / elapsed
    return [
        Figure(
            "audit_verify_rate",
            rate,
            "events/s",
            ">=",
            200_000,
            f"{total} events in {elapsed:.2f} s; bare hashlib over the same bytes {raw_rate:,.0f}/s "
            f"(verify at {rate / raw_rate:.2f}x of it)",
        ),
    ]


def _export_peak(count: int) -> float:
    from audit.export import jsonl_lines
    from audit.models import AuditEvent

    queryset = AuditEvent.objects.filter(id__lte=count).order_by("id")
    tracemalloc.start()
    exported = sum(1 for _ in jsonl_lines(queryset))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert exported >= min(count, 1), exported
    return peak


def _export_memory() -> Figure:
    small, large = _export_peak(50_000), _export_peak(200_000)
    return Figure(
        "audit_export_memory_200k_over_50k",
        large / small,
        "x",
        "<=",
        1.5,
        f"peak {small / 1e6:.1f} MB for 50k events, {large / 1e6:.1f} MB for 200k (tracemalloc)",
    )


def run() -> list[Figure]:
    figures = [_audited_request_overhead()]
    figures += _verify_rate()
    figures.append(_export_memory())
    return figures
