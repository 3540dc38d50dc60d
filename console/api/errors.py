"""Every API error as JSON: {"detail": ..., "code": ...} or field errors {"field": ["message"]}."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from console.errors import ApplicationError
from console.permissions import ActionDenied, ObjectHidden, report_denial


def exception_handler(exc, context):
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
