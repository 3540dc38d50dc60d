"""Celery: a real worker process on real Redis; the ping API round trip."""

from __future__ import annotations

import pytest
from django.conf import settings

from workers.tasks import ping


def test_settings_follow_the_reliability_bar():
    assert settings.CELERY_WORKER_PREFETCH_MULTIPLIER == 1
    assert settings.CELERY_TASK_ACKS_LATE and settings.CELERY_TASK_REJECT_ON_WORKER_LOST
    assert settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"] == settings.CELERY_VISIBILITY_TIMEOUT
    assert settings.CELERY_TASK_TIME_LIMIT > settings.CELERY_TASK_SOFT_TIME_LIMIT
    assert not settings.CELERY_TASK_ALWAYS_EAGER


def test_a_real_worker_answers_the_ping_task(celery_worker_process):
    result = ping.delay()
    answer = result.get(timeout=20)
    assert answer["pong"] is True and answer["worker"]


@pytest.mark.django_db
def test_ping_api_round_trip(api, auditor, celery_worker_process):
    data = api(auditor).get("/api/v1/ping").data
    assert data["pong"] is True and data["round_trip_ms"] > 0
