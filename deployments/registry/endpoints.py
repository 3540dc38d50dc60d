"""Which network endpoints model sources may reach: an admin-managed allow-list of host names and
networks, checked on every request before it is sent and again on every redirect (SSRF)."""

from __future__ import annotations

import contextlib
import fnmatch
import ipaddress
import socket
import threading
from collections.abc import Iterator
from urllib.parse import urljoin, urlsplit

import requests
from django.conf import settings
from huggingface_hub import constants
from huggingface_hub.utils import get_session
from requests.adapters import BaseAdapter

from console.errors import ApplicationError
from deployments.models import AllowedEndpoint
from deployments.registry.network import source_unreachable

READ_TIMEOUT_S = 30.0  # an interactive call's read timeout when the library gives none (the connect one is short)


def _allowed(host: str, addresses: list[str], patterns: list[str]) -> bool:
    networks, names = [], []
    for pattern in patterns:
        try:
            networks.append(ipaddress.ip_network(pattern, strict=False))
        except ValueError:
            names.append(pattern.lower())
    if any(fnmatch.fnmatch(host.lower(), name) for name in names):
        return True
    return bool(addresses) and all(any(ipaddress.ip_address(a) in net for net in networks) for a in addresses)


def resolve_addresses(host: str) -> list[str]:
    try:
        return sorted({info[4][0] for info in socket.getaddrinfo(host, None)})
    except socket.gaierror:
        return []


def check_url(url: str, *, patterns: list[str] | None = None, resolver=resolve_addresses) -> None:
    """Raise ApplicationError (field "endpoint") unless url is http(s) to an allowed host or network.

    A host name on the list is allowed whatever it resolves to (an admin named it); otherwise every
    address it resolves to must lie in a listed network, so a name cannot smuggle in another address.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApplicationError("Use an http:// or https:// address.", field="endpoint")
    if parts.username or parts.password:
        raise ApplicationError("Put credentials in the access token, not in the address.", field="endpoint")
    patterns = patterns if patterns is not None else list(AllowedEndpoint.objects.values_list("pattern", flat=True))
    host = parts.hostname
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        addresses = resolver(host)
    if not _allowed(host, addresses, patterns):
        shown = ", ".join(addresses) or "no address"
        raise ApplicationError(
            f"{host} ({shown}) is not on the endpoint allow-list; an admin can add it under Models → Sources.",
            field="endpoint",
        )


class RedirectRefused(ApplicationError):
    """A request to a model source, or a redirect a source answered with, named an address the allow-list does
    not cover."""


class _AllowListAdapter(BaseAdapter):
    """Checks every request's address before the wrapped adapter sends it (first hops and redirects alike), so a
    host off the list is never contacted. Decisions are kept per host for the block's lifetime.

    With `connect_timeout` (interactive calls) a connection waits that long at most, and a network failure is
    raised at once as SourceUnreachable: huggingface_hub's own retries (five, with back-off: 24 s to say the Hub
    is unreachable) never see it, and a person gets one sentence instead of a traceback's text."""

    def __init__(self, inner: BaseAdapter, patterns: list[str], resolver, connect_timeout: float | None = None):
        super().__init__()
        self.inner, self.patterns, self.resolver = inner, patterns, resolver
        self.connect_timeout = connect_timeout
        self.allowed: set[tuple[str, str]] = set()

    def send(self, request, *args, **kwargs):
        parts = urlsplit(request.url)
        if (parts.scheme, parts.netloc) not in self.allowed:
            try:
                check_url(request.url, patterns=self.patterns, resolver=self.resolver)
            except ApplicationError as error:
                raise RedirectRefused(f"Request refused: {error.message}", field="endpoint") from None
            self.allowed.add((parts.scheme, parts.netloc))
        if self.connect_timeout is None:
            return self.inner.send(request, *args, **kwargs)
        kwargs["timeout"] = _short_connect(kwargs.get("timeout"), self.connect_timeout)
        try:
            return self.inner.send(request, *args, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise source_unreachable(exc, url=request.url, connect_timeout=self.connect_timeout) from exc

    def close(self) -> None:
        """The wrapped adapter keeps its pools: it is the session's own again after the block."""


def _short_connect(timeout, connect: float) -> tuple[float, float]:
    """requests' timeout (None, a number, or (connect, read)) with the connect part at most `connect`."""
    if isinstance(timeout, tuple):
        first, read = timeout
    else:
        first = read = timeout
    return (min(first, connect) if first else connect, read or READ_TIMEOUT_S)


def redirect_guard(patterns: list[str], resolver=resolve_addresses):
    """A requests response hook that re-checks the target of every redirect before it is followed."""

    def hook(response, *args, **kwargs):
        if response.is_redirect:
            target = urljoin(response.url, response.headers.get("Location", ""))
            try:
                check_url(target, patterns=patterns, resolver=resolver)
            except ApplicationError as error:
                raise RedirectRefused(f"Redirect refused: {error.message}", field="endpoint") from None
        return response

    return hook


class _Hops:
    """One allow_listed_hops block's guard: the checking adapters and the redirect hook, put on a session and taken
    off it again."""

    def __init__(self, patterns: list[str], resolver, connect_timeout: float | None) -> None:
        self.patterns, self.resolver, self.connect_timeout = patterns, resolver, connect_timeout
        self.hook = redirect_guard(patterns, resolver)
        self.originals: dict[int, dict] = {}

    def install(self, session: requests.Session) -> None:
        self.originals[id(session)] = dict(session.adapters)
        for prefix, inner in list(session.adapters.items()):
            session.adapters[prefix] = _AllowListAdapter(inner, self.patterns, self.resolver, self.connect_timeout)
        session.hooks["response"].append(self.hook)

    def uninstall(self, session: requests.Session) -> None:
        adapters = self.originals.pop(id(session), None)
        if adapters is None:
            return
        if self.hook in session.hooks["response"]:
            session.hooks["response"].remove(self.hook)
        session.adapters.clear()
        session.adapters.update(adapters)


_ACTIVE = threading.local()  # this thread's open allow_listed_hops blocks, innermost last


def session_factory() -> requests.Session:
    """huggingface_hub's session factory in every process (DeploymentsConfig.ready): a session made while a
    thread is inside allow_listed_hops carries that block's guard. huggingface_hub throws its sessions away after a
    connection error and makes new ones (reset_sessions); without this, the retry would go out unguarded."""
    session = _hf_default_factory()
    for hops in getattr(_ACTIVE, "blocks", []):
        hops.install(session)
    return session


def _hf_default_factory() -> requests.Session:
    from huggingface_hub.utils import _http

    return getattr(_http, "_default_backend_factory", requests.Session)()


@contextlib.contextmanager
def allow_listed_hops(
    patterns: list[str] | None = None, resolver=resolve_addresses, *, interactive: bool = False
) -> Iterator[None]:
    """Inside the block, huggingface_hub's session (this thread's, which the download engine also hands to its
    file threads) checks every request's address against the allow-list before sending it, and every redirect's
    target before following it: the one way any process (web, worker) talks to a model source. A refused hop
    raises RedirectRefused (field "endpoint"); nothing reaches a host off the list. Sessions huggingface_hub makes
    anew inside the block (after a reset) carry the same guard (session_factory).

    `interactive` (someone waits for the answer: adding a model, resolving, sizing): connections wait at most
    HUB_CONNECT_TIMEOUT seconds and a network failure raises SourceUnreachable (field "source") at once."""
    patterns = patterns if patterns is not None else list(AllowedEndpoint.objects.values_list("pattern", flat=True))
    hops = _Hops(patterns, resolver, settings.HUB_CONNECT_TIMEOUT if interactive else None)
    blocks = _ACTIVE.__dict__.setdefault("blocks", [])
    session = get_session()
    hops.install(session)
    blocks.append(hops)
    try:
        yield
    finally:
        blocks.remove(hops)
        for guarded in {id(session): session, id(get_session()): get_session()}.values():
            hops.uninstall(guarded)


def hub_endpoint() -> str:
    """The Hub this process's huggingface_hub calls when no source names another (HF_ENDPOINT, or the Hub)."""
    return constants.ENDPOINT.rstrip("/")
