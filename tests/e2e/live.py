"""A live daphne server (HTTP + websockets) in a forked process, for browser tests."""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from unittest import mock

from asgiref.sync import SyncToAsync
from channels.layers import channel_layers
from channels.testing import ChannelsLiveServerTestCase, live
from django.db import connections


def _fresh_connections_after_fork() -> None:
    """In the forked server: forget the parent's database connections (a SQLite handle or a
    PostgreSQL socket must never be shared across fork), channel layers and executor threads."""
    for alias in list(connections.settings):
        with contextlib.suppress(AttributeError):  # never opened in the parent
            del connections[alias]
    # Likewise the channel layer (its Redis connections belong to the parent's event loops) and
    # asgiref's thread-sensitive executor (its worker thread did not survive the fork).
    channel_layers.backends.clear()
    SyncToAsync.single_thread_executor = ThreadPoolExecutor(max_workers=1)
    # No renaming of the database: the forked settings already name the test database (channels'
    # own helper would prefix "test_" a second time on PostgreSQL).


class ConsoleLiveServerTestCase(ChannelsLiveServerTestCase):
    @classmethod
    def setUpClass(cls) -> None:
        connections.close_all()
        with mock.patch.object(live, "set_database_connection", _fresh_connections_after_fork):
            super().setUpClass()
