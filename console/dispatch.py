"""Tasks are sent by name: a service never imports a task module, so no layer below the workers depends on them.

The names are Celery's registered task names (workers/tasks.py), which never change.
"""

from __future__ import annotations

from typing import Any

from celery import current_app
from celery.result import AsyncResult

BENCHMARK_RERUNS_DUE = "workers.benchmark_reruns_due"
PING = "workers.ping"
ROTATE_SECRETS = "workers.rotate_secrets"
RUN_JOB = "workers.run_job"


def dispatch(name: str, *, args: list | None = None, kwargs: dict | None = None, **options: Any) -> AsyncResult:
    """Send task `name` (queue, headers, expires... as Celery's apply_async takes them)."""
    return current_app.send_task(name, args=args, kwargs=kwargs, **options)
