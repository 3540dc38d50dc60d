"""console/socket_backlog.py on its own: the kernel's count of bytes a TCP peer has not taken, and no probe (so no
bound) under a server it cannot see into. Under daphne, with a client that really stops reading, see
tests/faults/test_socket_faults.py (F8)."""

from __future__ import annotations

import asyncio
import socket
import time
from concurrent.futures import ThreadPoolExecutor

from console.socket_backlog import SCOPE_KEY, SocketBacklogMiddleware, _kernel_unsent, probe_for


def test_the_kernel_send_queue_counts_what_the_peer_has_not_read():
    with socket.create_server(("127.0.0.1", 0)) as server:
        sender = socket.create_connection(server.getsockname())
        receiver, _ = server.accept()
        with sender, receiver:
            assert _kernel_unsent(sender.fileno()) == 0
            sender.setblocking(False)
            sent = 0
            try:
                while sent < 16 * 2**20:  # until the peer's window and our send buffer are full
                    sent += sender.send(b"x" * 65536)
            except BlockingIOError:
                pass
            assert _kernel_unsent(sender.fileno()) > 0
            receiver.settimeout(5)
            taken = 0
            while taken < sent:
                taken += len(receiver.recv(2**20))
            deadline = time.monotonic() + 5
            while _kernel_unsent(sender.fileno()) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert _kernel_unsent(sender.fileno()) == 0


def test_no_probe_under_a_server_it_cannot_see_into():
    async def send(message):
        pass

    seen = {}

    async def app(scope, receive, send):
        seen.update(scope)

    assert probe_for(send) is None
    # In a thread of its own: an earlier test of the session may leave an event loop running in this one.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(
            asyncio.run, SocketBacklogMiddleware(app)({"type": "websocket", "path": "/ws/x/"}, None, send)
        ).result()
    assert seen == {"type": "websocket", "path": "/ws/x/"} and SCOPE_KEY not in seen
