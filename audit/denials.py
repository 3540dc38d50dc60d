"""Recording permission denials. Called by the outermost handlers (API exception handler, HTML
middleware, websocket consumer, task base) after the failing work's transaction has rolled back, so
the denial survives it."""

from __future__ import annotations

import logging

import audit

logger = logging.getLogger(__name__)


def record_denial(exc: Exception, *, user=None, path: str = "", status: int = 403) -> None:
    """Write a `permission.denied` event for a console permission exception (others are ignored)."""
    action = getattr(exc, "action", None)
    if action is None:
        return
    actor = getattr(exc, "user", None) or user
    if actor is None or not getattr(actor, "is_authenticated", False):
        return
    obj, model = getattr(exc, "obj", None), getattr(exc, "model", None)
    detail = {"denied_action": action, "status": status}
    if path:
        detail["path"] = path
    try:
        audit.record(
            action="permission.denied",
            actor=actor,
            target=obj,
            target_type="" if obj is not None or model is None else model._meta.label_lower,
            outcome="denied",
            detail=detail,
        )
    except Exception:
        logger.exception("could not record a permission denial")
