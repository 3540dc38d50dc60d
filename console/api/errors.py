"""Every API error as JSON: {"detail": ..., "code": ...} or field errors {"field": ["message"]}."""

from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied
from django.db import InterfaceError, OperationalError
from django.http import Http404
from django.utils.translation import gettext as _
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from console.errors import ApplicationError
from console.permissions import ActionDenied, ObjectHidden, report_denial

logger = logging.getLogger(__name__)
DISK_FULL = "53100"  # PostgreSQL's SQLSTATE disk_full: a table or index could not grow
RETRY_AFTER_SECONDS = 30


def database_unavailable(exc: OperationalError | InterfaceError) -> Response:
    """The database could not take the request (full, restarting, unreachable): a 503 that says so and that the
    change was not saved (services run in one transaction), instead of a 500."""
    logger.warning("API request failed in the database: %s", exc)
    set_rollback()
    if getattr(exc.__cause__, "sqlstate", None) == DISK_FULL:
        detail = _(
            "The database's disk is full, so this change was not saved. An admin must free space on the "
            "database's volume; then try again."
        )
        code = "database_full"
    else:
        detail = _(
            "The database cannot be reached or did not complete the request, so this change was not saved. Try "
            "again in a moment; if it keeps failing, an admin should check the database server."
        )
        code = "database_unavailable"
    return Response(
        {"detail": detail, "code": code},
        status=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def exception_handler(exc, context):
    if isinstance(exc, OperationalError | InterfaceError):
        return database_unavailable(exc)
    if isinstance(exc, ApplicationError):
        return Response(exc.as_dict(), status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, ActionDenied | ObjectHidden):
        # The service's transaction has rolled back by now: the denial is recorded on its own.
        request = context.get("request")
        report_denial(
            exc,
            user=getattr(request, "user", None),
            path=getattr(request, "path", ""),
            status=404 if isinstance(exc, ObjectHidden) else 403,
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and "detail" in response.data:
        response.data["code"] = getattr(response.data["detail"], "code", None) or "error"
    return response
