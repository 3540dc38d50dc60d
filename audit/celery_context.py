"""Carry the audit context from the request that enqueued a task into the worker that runs it."""

from __future__ import annotations

from celery.signals import before_task_publish, task_postrun, task_prerun, worker_init, worker_process_init

from audit import context
from audit.telemetry import instrument_celery

HEADER = "audit_context"
_tokens: dict[str, object] = {}


@before_task_publish.connect
def add_context(headers=None, **kwargs) -> None:
    """Attach the current audit context to an outgoing task."""
    # A caller may pass the context explicitly (work enqueued after commit, outside its request's scope).
    if headers is not None and HEADER not in headers:
        headers[HEADER] = context.current().as_headers()


@task_prerun.connect
def enter_context(task_id=None, task=None, **kwargs) -> None:
    request = task.request if task is not None else None
    sent = None
    if request is not None:
        sent = getattr(request, HEADER, None) or (getattr(request, "headers", None) or {}).get(HEADER)
    worker_context = context.AuditContext.from_headers(sent)
    # Work done by the worker is sourced "worker", whoever asked for it.
    _tokens[task_id] = context.set_context(context.AuditContext(**{**worker_context.as_headers(), "source": "worker"}))


def task_headers(*, initiator=None) -> dict:
    """Headers carrying the current audit context, naming `initiator` as who started the work."""
    current = context.current()
    if initiator is not None:
        current = context.AuditContext(
            **{**current.as_headers(), "initiator_id": initiator.pk, "initiator_name": initiator.get_username()}
        )
    return {HEADER: current.as_headers()}


@task_postrun.connect
def leave_context(task_id=None, **kwargs) -> None:
    token = _tokens.pop(task_id, None)
    if token is not None:
        context.reset_context(token)


@worker_init.connect  # a solo or threads pool runs tasks in the worker's own process
@worker_process_init.connect
def instrument(**kwargs) -> None:
    instrument_celery()
