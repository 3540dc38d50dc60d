"""The job-program contract: how a long ML job (fine-tune, merge, later quantize, evaluate, benchmark) talks to
the worker that started it. Standard library only, so the programs (ML environment) and the console's handlers
(control plane) share this one module.

Invocation
    python -m workers.jobs.<kind> --spec FILE

    FILE is a JSON object: the job's parameters. The program validates it before any heavy import.

Output
    stdout carries only events, one JSON object per line, each with a "type" and a "time" (Unix seconds):

    log         {"message", "level"}                       a line for the job log
    progress    {"step", "total"}                          steps done of steps planned
    metric      {"step", <name>: <number>, ...}            e.g. loss, learning_rate, grad_norm, eval_loss
    checkpoint  {"path", "step", "manifest"}               a checkpoint directory complete on disk
    result      {...}                                      the outcome, once, on success
    error       {"cause", "message", "next_step", ...}     why it failed, once, before a non-zero exit;
                                                           may carry where: "line", "field"

    Anything else (a library printing to the real stdout, a partial line) is not an event; `parse_event`
    returns None for it. Programs move stray output to stderr with `Events.claim_stdout()`.

Stopping
    SIGTERM (or SIGINT) sets a flag (`StopRequest`); the program checks it at step boundaries, saves a
    checkpoint, emits its checkpoint event and exits with EXIT_STOPPED. A second signal does not kill the
    program mid-save: the runtime's grace period and then SIGKILL decide that.

Exit codes
    EXIT_OK (0)         done; a result event was emitted
    EXIT_FAILED (1)     the work failed (an error event says why; an uncaught exception also exits 1)
    EXIT_BAD_INPUT (2)  the spec or the data is wrong or cannot run here; nothing was trained or written
    EXIT_STOPPED (3)    stopped on request after saving a checkpoint; resume from the newest checkpoint
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import IO, Any

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_STOPPED = 3
EXIT_CODES = {EXIT_OK: "done", EXIT_FAILED: "failed", EXIT_BAD_INPUT: "bad_input", EXIT_STOPPED: "stopped"}

EVENT_TYPES = ("log", "progress", "metric", "checkpoint", "result", "error")
# Fields an event must carry to be one (the console relies on them).
REQUIRED_FIELDS = {
    "log": ("message",),
    "progress": ("step", "total"),
    "metric": ("step",),
    "checkpoint": ("path", "step", "manifest"),
    "result": (),
    "error": ("cause", "message"),
}


class BadInput(Exception):
    """The spec or the data is wrong: exit EXIT_BAD_INPUT with an error event that says where."""

    def __init__(
        self,
        message: str,
        *,
        cause: str = "bad_input",
        next_step: str = "",
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.cause, self.next_step, self.line, self.field = message, cause, next_step, line, field

    def where(self) -> dict[str, Any]:
        return {key: value for key, value in (("line", self.line), ("field", self.field)) if value is not None}


class JobFailed(Exception):
    """The work failed for a reason a user can act on: exit EXIT_FAILED with cause and next step."""

    def __init__(self, message: str, *, cause: str = "failed", next_step: str = "") -> None:
        super().__init__(message)
        self.message, self.cause, self.next_step = message, cause, next_step


class Stopped(Exception):
    """Raised by a program after it saved its checkpoint on a stop request: exit EXIT_STOPPED."""


def _clean(value: Any) -> Any:
    # NaN and infinity are not JSON; a diverged loss is reported as null rather than breaking the line.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Events:
    """Writes events as JSON lines to one stream, whole lines only, from any thread."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout
        self._lock = threading.Lock()

    @classmethod
    def claim_stdout(cls) -> Events:
        """Keep the real stdout for events and point file descriptor 1 (and sys.stdout) at stderr, so prints from
        libraries, even from C code, never interleave with an event line."""
        sys.stdout.flush()
        events_fd = os.dup(1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        return cls(os.fdopen(events_fd, "w", buffering=1, encoding="utf-8"))

    def emit(self, type: str, **fields: Any) -> dict[str, Any]:
        if type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type!r}")
        event = {"type": type, "time": round(time.time(), 3), **{k: _clean(v) for k, v in fields.items()}}
        line = json.dumps(event, default=str, ensure_ascii=False, allow_nan=False)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()
        return event

    def log(self, message: str, level: str = "info") -> dict[str, Any]:
        return self.emit("log", message=message, level=level)

    def progress(self, step: int, total: int | None, **extra: Any) -> dict[str, Any]:
        return self.emit("progress", step=step, total=total, **extra)

    def metric(self, *, step: int, **values: float) -> dict[str, Any]:
        return self.emit("metric", step=step, **values)

    def checkpoint(self, path: str, step: int, manifest: dict[str, Any]) -> dict[str, Any]:
        return self.emit("checkpoint", path=str(path), step=step, manifest=manifest)

    def result(self, **fields: Any) -> dict[str, Any]:
        return self.emit("result", **fields)

    def error(self, cause: str, message: str, next_step: str = "", **where: Any) -> dict[str, Any]:
        return self.emit("error", cause=cause, message=message, next_step=next_step, **where)


def parse_event(line: str | bytes) -> dict[str, Any] | None:
    """One line of a program's stdout as an event dict, or None when the line is not an event."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if not isinstance(event, dict) or event.get("type") not in EVENT_TYPES:
        return None
    if any(name not in event for name in REQUIRED_FIELDS[event["type"]]):
        return None
    if event["type"] in ("progress", "metric", "checkpoint") and not _is_int(event["step"]):
        return None
    return event


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class StopRequest:
    """Set by SIGTERM or SIGINT; programs read `requested` at step boundaries."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal: int | None = None

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self, signum: int | None = None) -> None:
        self.signal = signum
        self._event.set()

    def install(self) -> StopRequest:
        """Handle SIGTERM and SIGINT in this (main) thread by setting the flag instead of dying."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda number, frame: self.request(number))
        return self


class _ArgumentParser(argparse.ArgumentParser):
    # A wrong command line is bad input with an error event, not argparse's bare usage text and exit.
    def error(self, message: str) -> None:  # type: ignore[override]
        raise BadInput(f"{self.prog}: {message}", field="argv", next_step=f"Run it as {self.prog} --spec FILE.")


def read_spec(argv: list[str] | None, prog: str) -> dict[str, Any]:
    """`--spec FILE` as a dict; BadInput when the file is missing or not a JSON object."""
    parser = _ArgumentParser(prog=prog)
    parser.add_argument("--spec", required=True, help="a JSON file with the job's parameters")
    args = parser.parse_args(argv)
    try:
        with open(args.spec, encoding="utf-8") as handle:
            spec = json.load(handle)
    except OSError as exc:
        raise BadInput(f"The spec file {args.spec} cannot be read: {exc.strerror}.", field="spec") from exc
    except ValueError as exc:
        raise BadInput(f"The spec file {args.spec} is not valid JSON: {exc}.", field="spec") from exc
    if not isinstance(spec, dict):
        raise BadInput(f"The spec file {args.spec} must hold a JSON object.", field="spec")
    return spec


Program = Callable[[dict[str, Any], Events, StopRequest], None]


def run_program(program: Program, argv: list[str] | None = None, *, prog: str = "job") -> int:
    """Run `program(spec, events, stop)` under the contract and return the exit code: reads the spec, claims
    stdout for events, installs the stop handler and turns the outcome into an error event and an exit code."""
    events = Events.claim_stdout()
    stop = StopRequest().install()
    try:
        program(read_spec(argv, prog), events, stop)
    except BadInput as exc:
        events.error(exc.cause, exc.message, exc.next_step, **exc.where())
        return EXIT_BAD_INPUT
    except Stopped:
        return EXIT_STOPPED
    except JobFailed as exc:
        events.error(exc.cause, exc.message, exc.next_step)
        return EXIT_FAILED
    except Exception as exc:
        # Anything else: the traceback goes to stderr (the job log), one sentence to the events.
        traceback.print_exc(file=sys.stderr)
        events.error("failed", f"{type(exc).__name__}: {exc}", "Read the job log for the traceback.")
        return EXIT_FAILED
    return EXIT_OK
