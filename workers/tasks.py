"""Celery tasks. Each is thin: load the record, call a service or runtime, record the outcome."""

from __future__ import annotations

import socket

from celery import shared_task
from django.utils import timezone


@shared_task(name="workers.ping", acks_late=False)
def ping() -> dict:
    """Answer with who served the task and when: proves the broker and result backend round trip."""
    return {"pong": True, "worker": socket.gethostname(), "at": timezone.now().isoformat()}


@shared_task(name="workers.rotate_secrets")
def rotate_secrets() -> dict:
    """Re-encrypt every stored secret under the newest key (requested from the console)."""
    from console.services.credentials import secrets_rotate

    return secrets_rotate(actor_name=f"worker:{socket.gethostname()}")
