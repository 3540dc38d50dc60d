"""The `benchmark` job kind: run the load generator (workers/jobs/loadgen.py) on the deployment's host agent
against the gateway, with the starter's inference key made for this run, and store each finished step as a
BenchmarkStep row as its event arrives (the page fills in while the sweep runs). The generator also samples each
running server's own /metrics during every step (workers/jobs/loadgen_metrics.py) and, on a GPU deployment, the
utilization of the servers' GPUs on this host through NVML (workers/jobs/loadgen_gpu.py).

The generator is an HTTP client: it runs with the agent's own python (it needs httptools, which the control
plane's environment has, and nothing of the ML environment) as a plain process, whatever runtime the model
server uses. The key reaches it as a file readable by the agent's user only, deleted when the job ends; it is
never in the spec, the command line, the broker message or the log.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from django.conf import settings

from deployments.benchmarks import services
from deployments.benchmarks.workload import loadgen_spec
from deployments.models import BenchmarkRun, DeploymentSpec, Job, JobLogLine
from deployments.serving.replicas import running_replicas
from workers.handlers.programs import ProgramRun
from workers.jobs.protocol import parse_event
from workers.runner import Handler, JobContext, JobFailure, register

PROGRAM = "loadgen"


def workdir(job: Job) -> Path:
    return Path(settings.DATA_DIR) / "benchmarks" / f"benchmark-{job.pk}"


def process_event(run: BenchmarkRun, event: dict[str, Any] | None) -> bool:
    """Store what one generator event says about the run: a `metric` event is a finished step. True when stored."""
    if not event or event.get("type") != "metric":
        return False
    return services.step_recorded(run, event) is not None


def process_lines(run: BenchmarkRun, lines: list[str]) -> int:
    """The generator's output lines through the same path as a live run's; how many steps were stored."""
    return sum(process_event(run, parse_event(line)) for line in lines)


class LoadgenRun(ProgramRun):
    """ProgramRun that also hands each step event to the benchmark as it arrives."""

    def __init__(self, ctx: JobContext, run: BenchmarkRun) -> None:
        # The generator runs as a process on the agent's host whatever runtime serves the model.
        super().__init__(ctx, "process")
        self.run = run

    def _event(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        if process_event(self.run, event):
            self.ctx.event("benchmark_step", {"step": event.get("step"), "label": event.get("label")})
        return super()._event(event)


def _write_key(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(value)


def _run_of(job: Job) -> BenchmarkRun:
    return BenchmarkRun.objects.select_related("deployment", "spec__artifact").get(pk=job.params["benchmark_run_id"])


def tokenizer_of(run: BenchmarkRun) -> str | None:
    """The served model's tokenizer.json when this host holds it (prompts of exact token lengths), else None (the
    generator then sizes prompts by its own estimate)."""
    if run.spec is None or not run.spec.artifact.path:
        return None
    path = Path(run.spec.artifact.path) / "tokenizer.json"
    return str(path) if path.is_file() else None


KV_CAPACITY_LINE = "Setting max batch total tokens to "
KV_CAPACITY = re.compile(re.escape(KV_CAPACITY_LINE) + r"(\d+)")


def _servers(run: BenchmarkRun) -> list:
    """The deployment's running servers with an http(s) endpoint: server 0 and its running replicas."""
    deployment = run.deployment
    servers = [deployment] if deployment.state == deployment.State.RUNNING and deployment.endpoint else []
    servers += running_replicas(deployment)
    return [server for server in servers if server.endpoint.startswith(("http://", "https://"))]


def _metrics_url(server) -> str:
    return f"{server.endpoint.rstrip('/')}/metrics"


def metrics_urls(run: BenchmarkRun) -> list[str]:
    """Each running server's own /metrics (the deployment's and its running replicas'): the agent runs on the
    deployment's host and reads them directly, not through the gateway. A server's /metrics needs no key."""
    return [_metrics_url(server) for server in _servers(run)]


def kv_capacity(server) -> int | None:
    """A TGI server's KV capacity in tokens, as its router logged it at warm-up into the serve job's log: TGI 3.x's
    /info no longer reports max_batch_total_tokens, and that line is where it says (None when not logged)."""
    if not server.job_id:
        return None
    line = (
        JobLogLine.objects.filter(job_id=server.job_id, text__contains=KV_CAPACITY_LINE)
        .order_by("-seq")
        .values_list("text", flat=True)
        .first()
    )
    found = KV_CAPACITY.search(line or "")
    return int(found.group(1)) if found else None


def kv_budgets(run: BenchmarkRun) -> dict[str, int]:
    """metrics URL -> KV capacity in tokens, for the servers whose log says it."""
    found = {_metrics_url(server): kv_capacity(server) for server in _servers(run)}
    return {url: tokens for url, tokens in found.items() if tokens}


def gpu_indexes(run: BenchmarkRun) -> list[int]:
    """The GPUs of the deployment's running servers on its host (where the agent runs the generator): its own and
    its replicas' there. Empty for a CPU deployment (there is nothing for NVML to read)."""
    deployment = run.deployment
    spec = run.spec or deployment.spec
    if spec is None or spec.device != DeploymentSpec.Device.GPU or deployment.host_id is None:
        return []
    indexes = set(deployment.gpu_indexes or []) if deployment.state == deployment.State.RUNNING else set()
    for replica in running_replicas(deployment):
        if replica.host_id == deployment.host_id:
            indexes.update(replica.gpu_indexes or [])
    return sorted(i for i in indexes if isinstance(i, int) and not isinstance(i, bool))


@register("benchmark")
class BenchmarkHandler(Handler):
    def run(self, ctx: JobContext) -> dict:
        job = ctx.job
        run = _run_of(job)
        if not run.api_key:
            raise JobFailure(
                "The benchmark's inference key is gone (the run was closed).",
                cause="key_missing",
                next_step="Start the benchmark again.",
            )
        services.benchmark_running(run)
        work = workdir(job)
        program = LoadgenRun(ctx, run)

        def start() -> None:
            key_file = work / "key"
            _write_key(key_file, run.api_key.reveal())
            spec = loadgen_spec(
                run.workload,
                base_url=job.params["base_url"],
                model=job.params["model"],
                api_key_file=str(key_file),
            )
            tokenizer = tokenizer_of(run)
            if tokenizer:
                spec["workload"]["tokenizer"] = tokenizer
            urls = metrics_urls(run)
            if urls:
                spec["metrics_urls"] = urls
                budgets = kv_budgets(run)
                if budgets:
                    spec["kv_budgets"] = budgets
            gpus = gpu_indexes(run)
            if gpus:
                spec["gpu_indexes"] = gpus
                spec["nvml_module"] = settings.AGENT_NVML_MODULE  # the module the agent reads its GPUs with
            program.start(PROGRAM, spec, work, python=sys.executable)

        outcome = program.attempt(start)
        result = outcome.result or {}
        steps = run.steps.count()
        ctx.log(f"benchmark finished: {steps} step(s) recorded")
        return {"benchmark": run.pk, "steps": steps, "generator": result.get("generator") or {}}

    def finished(self, ctx: JobContext, status: str) -> None:
        shutil.rmtree(workdir(ctx.job), ignore_errors=True)  # the key file goes with it
        run = BenchmarkRun.objects.filter(pk=ctx.job.params.get("benchmark_run_id")).first()
        if run is not None:
            services.benchmark_finished(run, status=status, cause=ctx.failure_cause, detail=ctx.failure_detail)
