"""Who/where/why of the work in progress, for audit events: set by middleware and the Celery task base.

The actor is always passed to audit.record() explicitly; this context only carries the request id,
client address, trace id and source (ui, api, worker, system), plus, in workers, who started the work.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace

SOURCES = ("ui", "api", "worker", "system")


@dataclass(frozen=True)
class AuditContext:
    source: str = "system"
    request_id: str = ""
    client_ip: str | None = None
    trace_id: str = ""
    initiator_id: int | None = None  # the user who started background work
    initiator_name: str = ""

    def as_headers(self) -> dict:
        return asdict(self)

    @classmethod
    def from_headers(cls, data: dict | None) -> AuditContext:
        known = {k: v for k, v in (data or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)


_EMPTY = AuditContext()
_current: contextvars.ContextVar[AuditContext | None] = contextvars.ContextVar("audit_context", default=None)


def current() -> AuditContext:
    return _current.get() or _EMPTY


@contextmanager
def bound(context: AuditContext | None = None, **changes):
    """Run a block with this audit context (or the current one with some fields changed)."""
    token = _current.set(replace(context or current(), **changes))
    try:
        yield current()
    finally:
        _current.reset(token)


def set_context(context: AuditContext) -> contextvars.Token:
    return _current.set(context)


def reset_context(token: contextvars.Token) -> None:
    _current.reset(token)
