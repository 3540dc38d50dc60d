"""Dispatch: GET /api/v1/ping round trip divided by a raw Celery ping round trip, same run.

The API call adds Django's stack to the same Celery round trip: middleware, token authentication (cached per
process, console/accounts/services/token_cache.py, so a warm token asks the database nothing) and the role check.
Issue 20's goal: the median at most 1.5 times the raw round trip."""

from __future__ import annotations

import time

from bench.common import Figure, median, p, start_worker, stop

ROUNDS = 200


def run() -> list[Figure]:
    from django.test import Client

    from console.accounts.services.tokens import token_create
    from tests.factories import UserFactory
    from workers.tasks import ping

    user = UserFactory(username="bench-auditor", roles=["auditor"])
    _token, raw = token_create(actor=user, user=user, name="bench")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {raw}", HTTP_HOST="127.0.0.1")
    worker = start_worker()
    try:
        for _ in range(20):  # warm both paths
            ping.delay().get(timeout=10)
            assert client.get("/api/v1/ping").status_code == 200
        raw_times, api_times = [], []
        for _ in range(ROUNDS):  # interleaved, so drift hits both alike
            start = time.perf_counter()
            ping.delay().get(timeout=10)
            raw_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            response = client.get("/api/v1/ping")
            api_times.append(time.perf_counter() - start)
            assert response.status_code == 200, response.content
    finally:
        stop(worker)
    ratio = median(api_times) / median(raw_times)
    ratio95 = p(api_times, 0.95) / p(raw_times, 0.95)
    note = (
        f"median api {median(api_times) * 1000:.2f} ms vs raw celery {median(raw_times) * 1000:.2f} ms; "
        f"p95 {p(api_times, 0.95) * 1000:.2f} vs {p(raw_times, 0.95) * 1000:.2f} ms"
    )
    return [
        Figure("dispatch_ping_api_over_raw_celery_median", ratio, "x", "<=", 1.5, note),
        Figure("dispatch_ping_api_over_raw_celery_p95", ratio95, "x", "<=", 2),
    ]
