"""How far a websocket client has fallen behind: the bytes the server holds for it that it has not taken yet.

ASGI gives an application no way to ask, so this looks under the server it runs on. Under daphne (the `web`
service) the `send` a connection gets is functools.partial(Server.handle_reply, protocol); the protocol's Twisted
transport buffers what the kernel would not take, and the kernel's send queue (SIOCOUTQ) holds what the client
has not acknowledged. Under another server, or where a detail differs, there is no probe and no bound applies.
"""

from __future__ import annotations

import fcntl
import functools
import struct
import termios
from collections.abc import Callable

SCOPE_KEY = "socket_backlog"  # the scope entry holding the probe: scope[SCOPE_KEY]() -> bytes or None
Probe = Callable[[], "int | None"]


def _kernel_unsent(fd: int) -> int:
    """Bytes in a TCP socket's send queue the peer has not acknowledged (Linux: SIOCOUTQ == TIOCOUTQ)."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0]


def probe_for(send) -> Probe | None:
    """A function answering how many bytes wait for this connection's client, or None for a server it cannot see
    into."""
    if not isinstance(send, functools.partial) or not send.args:
        return None
    protocol = send.args[0]
    if not hasattr(protocol, "transport"):
        return None

    def unsent() -> int | None:
        transport = getattr(protocol, "transport", None)
        try:
            held = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
            fd = transport.fileno()
            return held + (_kernel_unsent(fd) if fd >= 0 else 0)
        except (AttributeError, TypeError, OSError, ValueError):  # closed, or not a Twisted TCP transport
            return None

    return unsent if unsent() is not None else None


class SocketBacklogMiddleware:
    """Puts the connection's probe into the scope (as scope["socket_backlog"]) where the server allows one."""

    def __init__(self, inner) -> None:
        self.inner = inner

    async def __call__(self, scope, receive, send):
        probe = probe_for(send)
        if probe is not None:
            scope = dict(scope, **{SCOPE_KEY: probe})
        return await self.inner(scope, receive, send)
