"""`manage.py inference_seal --every S`: seal the inference records the gateway queues, every S seconds, until
stopped (SIGTERM or SIGINT) or until the process named by --parent is gone, then once more.

The gateway runs this as its child (deployments/gateway/records.py `flusher`): sealing writes to the database and
hashes every record, and in the gateway's own process that work held the interpreter lock while tokens waited
(the gateway bench's time to first token). Beat's backstop (workers.inference_log_flush) seals what no gateway
sealed."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections, connection

from deployments.gateway.records import flush_pending

logger = logging.getLogger("deployments.gateway")


class Command(BaseCommand):
    help = (
        "Seal queued inference records every --every seconds until SIGTERM/SIGINT (or until the --parent process "
        "is gone), then a last time. The gateway starts one; run it by hand only to drain a queue."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--every", type=float, default=1.0, help="Seconds between flushes (default 1).")
        parser.add_argument("--parent", type=int, default=0, help="Stop (after a last flush) when this pid is gone.")

    def handle(self, *args, every: float, parent: int, **options) -> None:
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        try:
            while True:
                stopping = stop.is_set() or _gone(parent)
                _flush(20.0 if stopping else 10.0)
                if stopping:
                    return
                _wait(stop, every, parent)
        finally:
            connection.close()


def _flush(budget_seconds: float) -> None:
    close_old_connections()  # a connection past CONN_MAX_AGE or broken since the last flush is replaced
    try:
        flush_pending(budget_seconds=budget_seconds)
    except Exception:  # the records stay queued in Redis for the next flush
        logger.exception("inference log: flush failed; the records stay queued in Redis")


def _wait(stop: threading.Event, seconds: float, parent: int) -> None:
    """Sleep until the next flush, looking at least once a second whether the parent is still there."""
    deadline = time.monotonic() + max(seconds, 0.01)
    while not stop.is_set() and not _gone(parent):
        left = deadline - time.monotonic()
        if left <= 0:
            return
        stop.wait(min(left, 1.0))


def _gone(parent: int) -> bool:
    # Reparented (our parent died, even by SIGKILL): nobody would stop us.
    return bool(parent) and os.getppid() != parent
