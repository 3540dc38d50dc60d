"""Celery tasks. Each is thin: load the record, call a service or runtime, record the outcome."""

from __future__ import annotations

import socket

from celery import shared_task
from django.utils import timezone


@shared_task(name="workers.ping", acks_late=False)
def ping() -> dict:
    """Answer with who served the task and when: proves the broker and result backend round trip."""
    return {"pong": True, "worker": socket.gethostname(), "at": timezone.now().isoformat()}
