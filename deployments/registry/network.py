"""A model source that cannot be reached, said as one sentence: which host, why in a few words, what to do.

requests, urllib3 and huggingface_hub wrap a refused or silent connection in three or four layers
(`ConnectionError(MaxRetryError(NewConnectionError(ConnectionRefusedError)))`); their text is Python, not an
answer. `source_unreachable` reads the chain once, for the web process (adding a model, resolving, sizing) and
for the download job alike."""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
import urllib3
from django.utils.translation import gettext

from console.errors import ApplicationError

NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    requests.ConnectionError,
    requests.Timeout,
    urllib3.exceptions.NewConnectionError,
    urllib3.exceptions.ConnectTimeoutError,
    urllib3.exceptions.MaxRetryError,
    urllib3.exceptions.ProtocolError,
    ConnectionError,
    TimeoutError,
    socket.gaierror,
)


class SourceUnreachable(ApplicationError):
    """A model source did not answer (refused, silent, unknown name, TLS): nothing the user typed is wrong."""

    def __init__(self, message: str, *, host: str, reason: str, field: str | None = "source") -> None:
        super().__init__(message, field=field)
        self.host, self.reason = host, reason


@dataclass(frozen=True)
class Unreachable:
    host: str
    reason: str

    @property
    def message(self) -> str:
        return gettext("Cannot reach %(host)s: %(reason)s.") % {"host": self.host, "reason": self.reason}

    @staticmethod
    def next_step() -> str:
        return gettext("Configure a mirror (Models → Sources) or import a local directory.")

    def error(self, *, field: str | None = "source") -> SourceUnreachable:
        return SourceUnreachable(f"{self.message} {self.next_step()}", host=self.host, reason=self.reason, field=field)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """exc and everything it wraps: causes, contexts, urllib3's `reason`, requests' first argument."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        item = todo.pop(0)
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        todo += [item.__cause__, item.__context__, getattr(item, "reason", None)]
        todo += [arg for arg in getattr(item, "args", ()) if isinstance(arg, BaseException)]


def _reason(chain: list[BaseException], connect_timeout: float | None) -> str:
    def has(*types) -> bool:
        return any(isinstance(item, types) for item in chain)

    codes = {getattr(item, "errno", None) for item in chain}
    if has(socket.gaierror, urllib3.exceptions.NameResolutionError):
        return gettext("its name does not resolve (DNS)")
    if has(requests.exceptions.ProxyError, urllib3.exceptions.ProxyError):
        return gettext("the proxy refused the connection")
    if has(requests.exceptions.SSLError, urllib3.exceptions.SSLError, ssl.SSLError):
        return gettext("the TLS handshake failed")
    if has(ConnectionRefusedError) or errno.ECONNREFUSED in codes:
        return gettext("the connection was refused")
    if codes & {errno.ENETUNREACH, errno.EHOSTUNREACH}:
        return gettext("there is no route to it")
    if has(requests.exceptions.ConnectTimeout, urllib3.exceptions.ConnectTimeoutError):
        if connect_timeout:
            return gettext("no answer to the connection within %(seconds)s s") % {"seconds": f"{connect_timeout:g}"}
        return gettext("no answer to the connection")
    if has(requests.Timeout, urllib3.exceptions.ReadTimeoutError, TimeoutError, socket.timeout):
        return gettext("it stopped answering")
    if has(ConnectionResetError, urllib3.exceptions.ProtocolError):
        return gettext("the connection was cut")
    return gettext("the connection failed")


def _host(chain: list[BaseException], url: str | None) -> str:
    for item in chain:
        request = getattr(item, "request", None)
        if getattr(request, "url", None):
            return urlsplit(request.url).hostname or ""
        pool = getattr(item, "pool", None)
        if getattr(pool, "host", None):
            return pool.host
    return (urlsplit(url).hostname or url or "") if url else ""


def unreachable(
    exc: BaseException, *, url: str | None = None, connect_timeout: float | None = None
) -> Unreachable | None:
    """The host and a short reason when exc is (or wraps) a network failure; None for anything else (an HTTP
    answer, a refusal of the allow-list). `url` names the host when the exception does not."""
    chain = list(_chain(exc))
    if not any(isinstance(item, NETWORK_ERRORS) for item in chain):
        return None
    return Unreachable(host=_host(chain, url) or gettext("the model source"), reason=_reason(chain, connect_timeout))


def source_unreachable(
    exc: BaseException, *, url: str | None = None, connect_timeout: float | None = None, field: str | None = "source"
) -> SourceUnreachable | None:
    """The ApplicationError (400) an interactive call raises for a network failure: "Cannot reach <host>: <short
    reason>. Configure a mirror (Models → Sources) or import a local directory."; None when exc is none."""
    found = unreachable(exc, url=url, connect_timeout=connect_timeout)
    return found.error(field=field) if found else None
