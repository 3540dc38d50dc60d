"""Job kinds for testing the job framework itself (imported by the tests; by a test worker via `--include`)."""

from __future__ import annotations

import os
import threading
import time

from workers.runner import Handler, JobCancelled, JobContext, JobFailure, register


@register("test.count")
class CountHandler(Handler):
    """Logs params["lines"] lines (optionally slowly) and returns how many; records each run in a file."""

    def run(self, ctx: JobContext) -> dict:
        lines, delay = ctx.job.params.get("lines", 3), ctx.job.params.get("delay", 0)
        for i in range(lines):
            if ctx.should_cancel():
                raise JobCancelled()
            ctx.log(f"line {i + 1}")
            if delay:
                time.sleep(delay)
        marker = ctx.job.params.get("runs_file")
        if marker:
            with open(marker, "a") as handle:
                handle.write(f"{ctx.job.pk}\n")
        return {"lines": lines}


@register("test.fail")
class FailHandler(Handler):
    def run(self, ctx: JobContext) -> dict:
        if ctx.job.params.get("crash"):
            raise RuntimeError("boom")
        raise JobFailure("The probe failed on purpose.", cause="probe", next_step="Nothing to do; it is a test.")


@register("test.die")
class DieHandler(Handler):
    """Kills its own process, like the kernel's OOM killer would, every time."""

    def run(self, ctx: JobContext) -> dict:
        ctx.log("about to be killed")
        ctx.log_writer.flush()
        os._exit(137)


# Set by a test to end a test.quiet job early; the job itself does nothing but wait (no log, no cancel poll).
QUIET_WAKE = threading.Event()


@register("test.quiet")
class QuietHandler(Handler):
    """Logs one line, then waits params["seconds"] without touching its context, like a server being watched."""

    def run(self, ctx: JobContext) -> dict:
        ctx.log("running: waiting quietly")
        QUIET_WAKE.wait(ctx.job.params.get("seconds", 10))
        return {}
