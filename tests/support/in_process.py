"""The console's WSGI application called in-process, inside the test's database transaction.

Django's test client keeps the connection open across requests by disconnecting `close_old_connections`
from `request_started` and `request_finished`; a tool that drives the raw WSGI app (schemathesis through
werkzeug) needs the same, or the first request closes the connection and with it the test's transaction.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from django.core.signals import got_request_exception, request_finished, request_started
from django.db import close_old_connections


@dataclass
class InProcessApp:
    """A WSGI callable around the console's application that records the traceback of every unhandled
    exception (Django turns it into a 500; the traceback says where)."""

    application: Callable
    tracebacks: list[str] = field(default_factory=list)

    def _record(self, sender, request=None, **kwargs) -> None:
        self.tracebacks.append("".join(traceback.format_exception(*sys.exc_info())))

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        request_started.disconnect(close_old_connections)
        request_finished.disconnect(close_old_connections)
        got_request_exception.connect(self._record)
        try:
            result = self.application(environ, start_response)
            try:
                body = b"".join(result)  # read it all here: streaming bodies still run inside the transaction
            finally:
                if hasattr(result, "close"):
                    result.close()
        finally:
            got_request_exception.disconnect(self._record)
            request_finished.connect(close_old_connections)
            request_started.connect(close_old_connections)
        return [body]
