"""Which pages may open the console's websockets: an exact origin (scheme, host and port), never a host alone.

A page may connect when its Origin is listed in WEBSOCKET_ALLOWED_ORIGINS (by default each ALLOWED_HOSTS name
over http and https on the default ports, plus CSRF_TRUSTED_ORIGINS), or when it is the very origin the
socket was opened on (the Origin's host and port are the request's Host, a host in ALLOWED_HOSTS): the console's
own pages, whatever port `make run` or a proxy serves them on. `http://localhost:9999` reaching a console on
:8000 is neither, so it is refused.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host


def default_origins() -> list[str]:
    hosts = [host for host in settings.ALLOWED_HOSTS if host and "*" not in host and not host.startswith(".")]
    return [f"{scheme}://{host}" for host in hosts for scheme in ("http", "https")] + list(
        settings.CSRF_TRUSTED_ORIGINS
    )


def _normal(origin: str) -> str:
    """`scheme://host[:port]`, lower case, the default port left out."""
    parts = urlsplit(origin.strip().lower())
    default_port = {"http": 80, "https": 443}.get(parts.scheme)
    try:
        port = parts.port
    except ValueError:
        return ""
    shown = f":{port}" if port and port != default_port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{shown}" if parts.scheme and parts.hostname else ""


def origin_allowed(origin: str, host: str) -> bool:
    """Whether a page of `origin` may open a socket whose request named `host` (the Host header)."""
    origin = _normal(origin)
    if not origin.startswith(("http://", "https://")):
        return False
    allowed = {_normal(item) for item in (settings.WEBSOCKET_ALLOWED_ORIGINS or default_origins())}
    if origin in allowed:
        return True
    scheme = origin.split("://", 1)[0]
    domain, _port = split_domain_port(host.lower())
    return bool(host) and origin == _normal(f"{scheme}://{host}") and validate_host(domain, settings.ALLOWED_HOSTS)


class ExactOriginValidator:
    """ASGI middleware for websockets: refuses the handshake unless `origin_allowed` (as Channels' own
    validators do, with whole origins instead of host names)."""

    def __init__(self, application) -> None:
        self.application = application

    async def __call__(self, scope, receive, send):
        headers = dict(scope.get("headers") or [])
        origin = headers.get(b"origin", b"").decode("latin1")
        host = headers.get(b"host", b"").decode("latin1")
        if origin and origin_allowed(origin, host):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)
