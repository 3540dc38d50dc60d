"""Progress of a download or a hash of local files: what is reported, and the meter that counts and reports it."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from deployments.registry.downloads.errors import Cancelled

CANCEL_CHECK_S = 0.1
"""``should_cancel`` may hit a database: call it at most this often (transfer sizes reads to last <= READ_TARGET_S)."""
RATE_WINDOW_S = 5.0


@dataclass
class Progress:
    """What a download (or a hash of local files) has done so far: the current file and the whole job.

    ``rate_bps`` is over the last ~5 s of network bytes (0 while only hashing); ``eta_s`` is None until it is
    known. ``phase`` is "downloading", "verifying" (hashing bytes already on disk) or "hashing" (local import).
    """

    file: str
    file_done: int
    file_total: int
    done: int
    total: int
    rate_bps: float
    eta_s: float | None
    phase: str = "downloading"
    files_done: int = 0
    files_total: int = 0


def progress_dict(progress: Progress) -> dict[str, Any]:
    """A Progress as plain data (for job state or a websocket message)."""
    return asdict(progress)


class _Meter:
    """Counts bytes and calls ``on_progress`` at most every ``interval`` seconds (and when told to)."""

    def __init__(
        self,
        on_progress: Callable[[Progress], None] | None,
        should_cancel: Callable[[], bool] | None,
        *,
        total: int,
        files_total: int,
        interval: float,
        cancelled_message: Callable[[], str] | None = None,
    ):
        self.on_progress = on_progress
        self.should_cancel = should_cancel
        self.interval = interval
        self.total = total
        self.files_total = files_total
        self.files_done = 0
        self.done = 0
        self.fetched = 0  # network bytes only: the rate is about the link, not the disk
        # Files download in parallel: each thread has its own current file; the totals are shared.
        self._local = threading.local()
        self._lock = threading.RLock()
        self.aborted = threading.Event()  # one file failed, or a cancel was seen: the other files stop too
        self.cancel_seen = False
        self.current: tuple[str, int, int, str] = ("", 0, 0, "downloading")
        self.finished: list[tuple[str, int, str]] = []
        # The callbacks (they may touch a database) run only on the thread that called download().
        self.caller = threading.get_ident()
        self.cancelled_message = cancelled_message
        now = time.monotonic()
        self.samples: deque[tuple[float, int]] = deque([(now, 0)])
        self.last_emit = -float("inf")
        self.last_cancel_check = -float("inf")

    # The calling thread's current file.
    file = property(lambda self: getattr(self._local, "file", ""))
    file_done = property(lambda self: getattr(self._local, "file_done", 0))
    file_total = property(lambda self: getattr(self._local, "file_total", 0))
    phase = property(lambda self: getattr(self._local, "phase", "downloading"))

    def _share(self) -> None:
        """The most recently active file is what progress reports show."""
        self.current = (self.file, self.file_done, self.file_total, self.phase)

    def start_file(self, path: str, size: int, phase: str) -> None:
        local = self._local
        local.file, local.file_total, local.file_done, local.phase = path, size, 0, phase
        self._share()

    def add(self, n: int, *, fetched: bool) -> None:
        self._local.file_done = self.file_done + n
        self._share()
        with self._lock:
            self.done += n
            if fetched:
                self.fetched += n
                now = time.monotonic()
                if now - self.samples[-1][0] >= 0.1:
                    self.samples.append((now, self.fetched))

    def set_file_done(self, n: int) -> None:
        self._local.file_done = n
        self._share()

    def rewind_file(self) -> None:
        """The bytes of the current file are thrown away (the server restarted it, or they failed to verify)."""
        with self._lock:
            self.done -= self.file_done
        self._local.file_done = 0

    def finish_file(self) -> None:
        with self._lock:
            self.files_done += 1
            self.finished.append((self.file, self.file_total, self.phase))
        self.drain()

    def drain(self) -> None:
        """On the calling thread: one report at the end of each file finished since the last call."""
        if not self.on_caller():
            return
        with self._lock:
            finished, self.finished = self.finished, []
        for path, size, phase in finished:
            self.current = (path, size, size, phase)
            self.emit()

    def rate(self, now: float) -> float:
        while len(self.samples) > 1 and self.samples[1][0] <= now - RATE_WINDOW_S:
            self.samples.popleft()
        start, fetched = self.samples[0]
        elapsed = now - start
        return (self.fetched - fetched) / elapsed if elapsed > 0 else 0.0

    def on_caller(self) -> bool:
        return threading.get_ident() == self.caller

    def emit(self) -> None:
        if not self.on_caller():
            return  # the calling thread reports for everyone (see _Download.run)
        with self._lock:
            self._emit()

    def _emit(self) -> None:
        now = time.monotonic()
        self.last_emit = now
        if self.on_progress is None:
            return
        rate = self.rate(now)
        remaining = max(self.total - self.done, 0)
        eta = remaining / rate if rate > 0 else (0.0 if remaining == 0 else None)
        file, file_done, file_total, phase = self.current
        self.on_progress(
            Progress(
                file=file,
                file_done=file_done,
                file_total=file_total,
                done=self.done,
                total=self.total,
                rate_bps=rate,
                eta_s=eta,
                phase=phase,
                files_done=self.files_done,
                files_total=self.files_total,
            )
        )

    def check_cancel(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.aborted.is_set():
            message = self.cancelled_message() if self.cancel_seen and self.cancelled_message else "Cancelled."
            raise Cancelled(message if self.cancel_seen else "Stopped: another file of this download failed.")
        if not self.on_caller():
            return
        if self.should_cancel is not None and (force or now - self.last_cancel_check >= CANCEL_CHECK_S):
            self.last_cancel_check = now
            if self.should_cancel():
                self.cancel_seen = True
                self.aborted.set()
                message = self.cancelled_message() if self.cancelled_message else "Cancelled."
                raise Cancelled(message)

    def tick(self) -> None:
        """Between chunks: honour a cancel, report progress when due."""
        self.check_cancel()
        self.drain()
        if time.monotonic() - self.last_emit >= self.interval:
            self.emit()

    def sleep(self, seconds: float) -> None:
        """Sleep, checking for a cancel at least every CANCEL_CHECK_S."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, CANCEL_CHECK_S))
            self.check_cancel(force=True)
