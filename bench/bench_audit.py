"""Audit figures: added latency per audited request, verification rate, export memory."""

from __future__ import annotations

import hashlib
import os
import time
import tracemalloc

from bench.common import Figure, p

REQUESTS = 300
# Options for a busy machine: BENCH_AUDIT_EVENTS (events in the verified chain), BENCH_AUDIT_FIGURES (a comma list
# of overhead, verify, export; all by default).
CHAIN_EVENTS = int(os.environ.get("BENCH_AUDIT_EVENTS", "200000"))
FIGURES = os.environ.get("BENCH_AUDIT_FIGURES", "overhead,verify,export").split(",")
ROUNDS = 3  # verification and bare hashing alternate, best of each: load on the machine hits both alike


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

    from audit import chain, verify
    from audit.models import AuditEvent

    _seed_chain(CHAIN_EVENTS)
    total = AuditEvent.objects.count()
    last_id = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first()
    # Same run, same bytes: how fast bare SHA-256 gets through the hashed content of every event.
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {', '.join(chain.HASHED_COLUMNS)} FROM audit_auditevent")  # noqa: S608
        payloads = [chain.payload(row) for row in cursor.fetchall()]
    verify_s = bare_s = fetch_s = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        result = verify.verify_chain()
        verify_s = min(verify_s, time.perf_counter() - start)
        assert result.ok, result.summary()
        start = time.perf_counter()
        for payload in payloads:
            hashlib.sha256(payload).hexdigest()
        bare_s = min(bare_s, time.perf_counter() - start)
        start = time.perf_counter()
        for _rows in verify._batches(0, last_id):  # the verifier's queries alone, nothing hashed: its floor
            pass
        fetch_s = min(fetch_s, time.perf_counter() - start)
    rate, raw_rate = total / verify_s, len(payloads) / bare_s
    context = (
        f"{connection.vendor}, {total} events, best of {ROUNDS}: verify {rate:,.0f}/s, bare hashlib over the same "
        f"bytes {raw_rate:,.0f}/s; fetching the verifier's rows alone {total / fetch_s:,.0f}/s "
        f"(the ceiling for this ratio: {bare_s / fetch_s:.2f})"
    )
    return [
        Figure("audit_verify_rate", rate, "events/s", ">=", 200_000, context),
        Figure("audit_verify_over_bare_sha256", rate / raw_rate, "x", ">=", 0.5, context),
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
    figures = []
    if "overhead" in FIGURES:
        figures.append(_audited_request_overhead())
    if "verify" in FIGURES:
        figures += _verify_rate()
    if "export" in FIGURES:
        figures.append(_export_memory())
    return figures
