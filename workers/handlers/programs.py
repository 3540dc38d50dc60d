"""Running a job program (workers/jobs/<kind>.py, the contract in workers/jobs/protocol.py) for a job, through
the host's runtime: find the program this job already started (after a worker was killed) or start it, copy its
output into the job log with the cursor saved alongside, turn its events into log lines, progress and metrics,
and hand checkpoint and result events to the job kind. Exactly one program per job: extra ones are removed.

The program runs in its own session (process group), so it outlives a killed worker; the next attempt adopts it
by its label. A cancel is SIGTERM: the program saves a checkpoint at the next step boundary and exits 3.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction

from deployments.models import Job
from workers.jobs.protocol import EXIT_BAD_INPUT, EXIT_OK, EXIT_STOPPED, parse_event
from workers.mlenv import MLEnvironmentMissing, distributed_job_command, job_command, job_env
from workers.runner import JobCancelled, JobContext, JobFailure
from workers.runtimes import Handle, RunSpec, RuntimeFailure, get_runtime
from workers.runtimes.base import LABEL_JOB, LABEL_MANAGED

POLL_SECONDS = 0.5


@dataclass
class ProgramOutcome:
    exit_code: int | None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    checkpoints: list[dict[str, Any]] = field(default_factory=list)


def program_name(job: Job) -> str:
    return f"llmdeploy-job-{job.pk}-{job.kind}"[:63]


def program_labels(job: Job) -> dict[str, str]:
    return {LABEL_MANAGED: "true", LABEL_JOB: str(job.pk)}


class ProgramRun:
    """One attempt's hold on a job's program. `on_checkpoint(event)` is called for each checkpoint event (once:
    the cursor makes a later attempt skip what was handled)."""

    def __init__(
        self, ctx: JobContext, runtime_name: str, *, on_checkpoint: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        self.ctx = ctx
        self.runtime = get_runtime(runtime_name)
        self.handle: Handle | None = None
        self.cursor = Job.objects.values_list("output_cursor", flat=True).get(pk=ctx.job.pk)
        self.on_checkpoint = on_checkpoint
        self.outcome = ProgramOutcome(exit_code=None)

    # -- start or adopt ------------------------------------------------------------------------------------------
    def find(self) -> str:
        """Look for the program this job started before: "running" (adopted: self.handle), "exited" (it ended while
        no worker watched: its remaining output is copied and self.outcome.exit_code set; None when it was killed)
        or "none". Only the newest is kept; extra or stopped ones are removed."""
        found = self.runtime.find({LABEL_JOB: str(self.ctx.job.pk)})
        live = [handle for handle in found if self.runtime.status(handle).alive]
        keep = live[0] if live else (found[-1] if found else None)
        for extra in found:
            if extra is not keep:
                self.ctx.log(f"removing an extra program {extra.name} ({extra.ref})")
                self.runtime.remove(extra)
        if keep is None:
            return "none"
        self.handle = keep
        if live:
            self.ctx.log(f"adopted the running program {keep.name} (process group {keep.ref})")
            return "running"
        self.copy_output()
        self.outcome.exit_code = self.runtime.status(keep).exit_code
        self.ctx.log(f"the program {keep.name} ended while no worker watched it (status {self.outcome.exit_code})")
        self.runtime.remove(keep)
        return "exited"

    def start(
        self,
        module: str,
        spec: dict[str, Any],
        workdir: Path,
        *,
        env: dict[str, str] | None = None,
        processes: int = 1,
        python: str | None = None,
    ) -> Handle:
        """Write the spec file and start `python -m workers.jobs.<module> --spec FILE` in the ML environment (under
        torchrun, data parallel, when `processes` > 1), or with `python` for a program that needs no ML library."""
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "tmp").mkdir(exist_ok=True)  # torchrun's and the libraries' scratch files stay with the job
        spec_file = workdir / "spec.json"
        spec_file.write_text(json.dumps(spec, indent=1))
        try:
            if python:
                program = [python, "-m", f"workers.jobs.{module}"]
            else:
                program = distributed_job_command(module, processes) if processes > 1 else job_command(module)
        except MLEnvironmentMissing as exc:
            raise JobFailure(
                str(exc), cause="ml_environment_missing", next_step="Run `make ml-env` on the host."
            ) from exc
        run = RunSpec(
            name=program_name(self.ctx.job),
            labels=program_labels(self.ctx.job),
            program=program,
            args=["--spec", str(spec_file)],
            env=job_env({"TMPDIR": str(workdir / "tmp"), **(env or {})}),
            model_dir="",
            model_store="",
            workdir=str(workdir),
            stop_grace=settings.JOB_PROGRAM_STOP_GRACE_SECONDS,
        )
        try:
            self.handle = self.runtime.start(run)
        except RuntimeFailure as failure:
            raise JobFailure(str(failure), cause=failure.cause, next_step="See the job's log.") from failure
        self.cursor = 0
        Job.objects.filter(pk=self.ctx.job.pk).update(output_cursor=0)
        self.ctx.log(f"started {self.handle.name} (process group {self.handle.ref}): {' '.join(self.handle.command)}")
        return self.handle

    # -- output ------------------------------------------------------------------------------------------------
    def copy_output(self) -> None:
        """New output into the job log: events become log lines, progress and metric lines; other lines (the
        program's stderr: library warnings, a traceback) are logged as they are. The cursor is saved with them."""
        lines, cursor = self.runtime.logs(self.handle, self.cursor)
        if not lines and cursor == self.cursor:
            return
        checkpoints = []
        for line in lines:
            event = parse_event(line)
            if event is None:
                self.ctx.log_writer.write(line)
            else:
                checkpoints.extend(self._event(event))
        with transaction.atomic():
            self.ctx.log_writer.flush()
            Job.objects.filter(pk=self.ctx.job.pk).update(output_cursor=cursor)
        self.cursor = cursor
        for event in checkpoints:
            self.outcome.checkpoints.append(event)
            if self.on_checkpoint is not None:
                self.on_checkpoint(event)

    def _event(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        kind = event["type"]
        if kind == "log":
            level = event.get("level") or "info"
            prefix = "" if level == "info" else f"{level}: "
            self.ctx.log_writer.write(prefix + str(event["message"]))
        elif kind == "progress":
            data = {"step": event["step"], "total": event["total"]}
            if event.get("eta_seconds") is not None:
                data["eta_seconds"] = event["eta_seconds"]
            self.ctx.progress(data)
        elif kind == "metric":
            data = {k: v for k, v in event.items() if k not in ("type", "time")}
            self.ctx.log_writer.write("", stream="metric", data=data)
        elif kind == "checkpoint":
            return [event]
        elif kind == "result":
            self.outcome.result = {k: v for k, v in event.items() if k not in ("type", "time")}
        elif kind == "error":
            self.outcome.error = event
            self.ctx.log_writer.write(f"error: {event['message']}")
        return []

    # -- the whole attempt --------------------------------------------------------------------------------------
    def attempt(self, start: Callable[[], None]) -> ProgramOutcome:
        """Adopt this job's program, judge one that ended unwatched, or call `start` (which fetches what it needs
        and calls `self.start`) when there is none or it was killed; then follow it to its outcome."""
        state = self.find()
        if state == "exited" and self.outcome.exit_code is None:
            self.ctx.log("the program was killed; starting it again (a job that checkpoints resumes from the newest)")
        if state == "none" or (state == "exited" and self.outcome.exit_code is None):
            start()
            state = "running"
        if state == "running":
            return self.follow()
        return self.judge(cancelled=Job.objects.filter(pk=self.ctx.job.pk, cancel_requested=True).exists())

    # -- follow to the end ------------------------------------------------------------------------------------
    def follow(self) -> ProgramOutcome:
        """Copy output until the program exits; a cancel request sends SIGTERM (the program checkpoints and exits 3)
        and waits for it within the grace period. Returns the outcome; raises JobCancelled or JobFailure."""
        stopping = False
        while True:
            self.copy_output()
            status = self.runtime.status(self.handle)
            if not status.alive:
                time.sleep(0.2)
                self.copy_output()
                self.outcome.exit_code = status.exit_code
                self.runtime.remove(self.handle)
                break
            if not stopping and self.ctx.should_cancel():
                if self.ctx.lost.is_set():
                    # Another attempt owns the job: it adopts the program; this one leaves it running.
                    raise JobCancelled
                stopping = True
                self.ctx.log("cancel requested: asking the program to save a checkpoint and stop")
                self._stop_in_background()
            time.sleep(POLL_SECONDS)
        return self.judge(cancelled=stopping)

    def _stop_in_background(self) -> None:
        # SIGTERM now; the runtime's stop waits for the grace period and kills what is left, while this attempt
        # keeps copying output (the checkpoint event arrives during the wait).
        handle = self.handle
        threading.Thread(
            target=self.runtime.stop,
            args=(handle, settings.JOB_PROGRAM_STOP_GRACE_SECONDS),
            name=f"stop-{handle.name}",
            daemon=True,
        ).start()

    def judge(self, *, cancelled: bool) -> ProgramOutcome:
        code = self.outcome.exit_code
        if code == EXIT_OK and self.outcome.result is not None:
            return self.outcome
        if code == EXIT_STOPPED or (cancelled and code not in (EXIT_OK, EXIT_BAD_INPUT)):
            raise JobCancelled
        error = self.outcome.error or {}
        if code == EXIT_OK:
            raise JobFailure("The program exited without a result.", cause="no_result", next_step="See the job's log.")
        raise JobFailure(
            str(error.get("message") or f"The program exited with status {code}."),
            cause=str(error.get("cause") or ("oom_killed" if code == 137 else "failed")),
            next_step=str(error.get("next_step") or "See the job's log."),
        )
