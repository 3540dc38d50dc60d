"""Database calls of the websocket consumers (live streams, heartbeats, the playground).

The web process keeps no database connection between requests (console/asgi.py: each request's sync work has a
thread of its own). Consumers are different: channels runs all their sync work in one shared thread, one call at a
time. Opening a connection for each of those calls cost four connections per socket opened, and 200 sockets opening
at once then ran past daphne's 5 s handshake timeout (F7, tests/faults/test_socket_faults.py). So the shared thread
keeps its connection for up to KEEP_SECONDS; a connection that failed is still closed after the call.
"""

from __future__ import annotations

from asgiref.sync import SyncToAsync
from django.db import close_old_connections, connections

KEEP_SECONDS = 60.0


def _keep_new_connections() -> None:
    for connection in connections.all(initialized_only=True):
        raw = connection.connection
        if raw is not None and connection.close_at is not None and getattr(connection, "_kept", None) is not raw:
            connection.close_at += KEEP_SECONDS  # set to the connect time by DB_CONN_MAX_AGE=0
            connection._kept = raw


class KeptConnectionSyncToAsync(SyncToAsync):
    """channels' database_sync_to_async, but the thread's connection outlives the call (up to KEEP_SECONDS)."""

    def thread_handler(self, loop, *args, **kwargs):
        close_old_connections()
        try:
            return super().thread_handler(loop, *args, **kwargs)
        finally:
            _keep_new_connections()
            close_old_connections()


database_sync_to_async = KeptConnectionSyncToAsync
