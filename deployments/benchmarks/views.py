"""Benchmark pages: the runs a user may see (filters, search, a pick of runs to compare), the start form with a
preset per deployment, a run's page (its steps live from the job's stream, charts, exports, cancel, the tuning
loop's suggestions and their Apply), and runs side by side. Rules live in services, selectors, compare and
tuning; these views parse, authorize through console.permissions and render."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import Q, QuerySet
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views import View

from console import roles
from console.errors import ApplicationError
from console.mixins import ConsoleViewMixin
from console.permissions import ActionDenied, can, may_use_some_deployment, restrict
from deployments.benchmarks import compare, selectors, services, tuning
from deployments.benchmarks.forms import BenchmarkFilterForm, BenchmarkForm, form_initial
from deployments.benchmarks.models import SERVER_FIGURES, BenchmarkRun
from deployments.benchmarks.presets import preset_for
from deployments.datasets.selectors import dataset_list
from deployments.jobs.selectors import can_read_job_log
from deployments.models import DatasetVersion, Deployment

PAGE_SIZE = 25
MAX_ID_DIGITS = 9
COMPARE_MIN, COMPARE_MAX = 2, compare.MAX_RUNS
# What the charts draw of a step (bench_charts.js), beside its load.
CHART_FIGURES = ("ttft_ms_p50", "ttft_ms_p99", "e2e_ms_p50", "e2e_ms_p99", "output_tokens_per_s")


def step_columns() -> list[tuple[str, str]]:
    """The steps table's columns (key, heading); bench_charts.js fills a live row from the same keys."""
    return [
        ("label", _("Step")),
        ("load", _("Load")),
        ("requests", _("Requests")),
        ("requests_failed", _("Failed")),
        *((name, label) for name, label in figure_labels().items() if name != "requests_failed"),
        ("errors", _("Errors by type")),
    ]


def server_columns() -> list[tuple[str, str]]:
    """The server's own figures from its /metrics during each step (queueing against compute)."""
    return [
        ("queue_size", _("Queue (mean)")),
        ("queue_size_max", _("Queue (peak)")),
        ("batch_size", _("Batch (mean)")),
        ("batch_size_max", _("Batch (peak)")),
        ("batch_tokens", _("Batch tokens (mean)")),
        ("kv_cache_usage_max", _("KV cache (peak)")),
        ("server_queue_ms_mean", _("Queue time (ms)")),
        ("server_prefill_ms_mean", _("Prefill time (ms)")),
        ("server_itl_ms_mean", _("Time per token (ms)")),
    ]


def cell(step, key: str) -> str:
    """One figure as the table shows it (as bench_charts.js writes a live row): one decimal, "—" when missing."""
    if key == "load":
        return str(step.concurrency) if step.concurrency is not None else (f"{step.rate:g}/s" if step.rate else "—")
    if key == "errors":
        return ", ".join(f"{name}: {count}" for name, count in sorted((step.errors or {}).items())) or "—"
    value = getattr(step, key)
    if isinstance(value, str):
        return value or str(step.index)
    if value is None:
        return "—"
    if key == "kv_cache_usage_max":
        return f"{100 * value:.0f} %"
    return f"{value:.1f}" if isinstance(value, float) and not value.is_integer() else str(int(value))


def step_rows(steps, columns) -> list[dict[str, Any]]:
    return [{"step": step, "cells": [(key, cell(step, key)) for key, _label in columns]} for step in steps]


def visible_deployments(user) -> QuerySet[Deployment]:
    return restrict(Deployment.objects.all(), user, roles.VIEW).order_by("name")


def usable_deployments(user) -> QuerySet[Deployment]:
    """Running deployments the user may benchmark (use_deployment on each)."""
    running = Deployment.objects.filter(state=Deployment.State.RUNNING, host__isnull=False)
    return restrict(running, user, roles.USE_DEPLOYMENT).select_related("spec").order_by("name")


def length_versions(user) -> QuerySet[DatasetVersion]:
    """Dataset versions the user may see whose statistics hold a token-length histogram (a prompt-length source)."""
    versions = DatasetVersion.objects.filter(dataset__in=dataset_list(user=user).values("pk"))
    versions = versions.filter(stats__token_lengths__has_keys=["bins", "counts"])
    return versions.select_related("dataset").order_by("dataset__name", "-version")


def search(runs: QuerySet[BenchmarkRun], query: str) -> QuerySet[BenchmarkRun]:
    """A run id (#12), its deployment's name, its note or who started it."""
    match = Q(deployment__name__icontains=query) | Q(note__icontains=query)
    match |= Q(created_by__username__icontains=query)
    number = query.lstrip("#")
    if number.isdigit() and len(number) <= MAX_ID_DIGITS:
        match |= Q(pk=int(number))
    return runs.filter(match)


def _length(value: Any) -> str:
    if isinstance(value, dict):
        points = value.get("percentiles")
        if isinstance(points, dict) and ("p50" in points or "50" in points):
            return _("~%(n)s") % {"n": points.get("p50", points.get("50"))}
        return _("distribution")
    return str(value)


def workload_text(workload: dict[str, Any]) -> str:
    """A workload in one line: "concurrency 1, 4, 16 · 256 → 128 tokens · 30 s per step"."""
    levels = ", ".join(f"{level:g}" for level in workload.get("levels") or [] if isinstance(level, int | float))
    sweep = _("rates %(levels)s /s") if workload.get("sweep") == "rate" else _("concurrency %(levels)s")
    parts = [sweep % {"levels": levels}]
    parts.append(
        _("%(prompt)s → %(output)s tokens")
        % {"prompt": _length(workload.get("prompt_tokens")), "output": _length(workload.get("output_tokens"))}
    )
    if workload.get("duration_s"):
        parts.append(_("%(s)s s per step") % {"s": f"{workload['duration_s']:g}"})
    elif workload.get("requests"):
        parts.append(_("%(n)s requests per step") % {"n": workload["requests"]})
    return " · ".join(parts)


def chart_run(run: BenchmarkRun, steps, label: str = "") -> dict[str, Any]:
    """A run as bench_charts.js draws it: its steps' loads and the charted figures."""
    names = ("index", "label", "concurrency", "rate", "has_errors", *CHART_FIGURES)
    return {
        "key": str(run.pk),
        "label": label or f"#{run.pk}",
        "steps": [{name: getattr(step, name) for name in names} for step in steps],
    }


class BenchmarkListView(ConsoleViewMixin, View):
    """The runs of deployments the user may view, newest first; filter by deployment and state, search; tick two
    to six to compare them."""

    permission_action = roles.VIEW

    def get(self, request):
        deployments = visible_deployments(request.user)
        filters = BenchmarkFilterForm(request.GET or None, deployments=deployments)
        data = filters.cleaned_data if filters.is_valid() else {}
        runs = selectors.benchmark_list(user=request.user)
        if data.get("q", "").strip():
            runs = search(runs, data["q"].strip())
        if data.get("deployment"):
            runs = runs.filter(deployment=data["deployment"])
        if data.get("state"):
            runs = runs.filter(state=data["state"])
        page = Paginator(runs, PAGE_SIZE).get_page(request.GET.get("page"))
        for run in page.object_list:
            run.workload_text = workload_text(run.workload or {})
        query = {key: value for key, value in request.GET.items() if key in filters.fields and value}
        context = {
            "page_obj": page,
            "runs": page.object_list,
            "filters": filters,
            "filter_query": urlencode(query),
            "filtered": bool(query),
            "can_start": may_use_some_deployment(request.user),
            "compare_min": COMPARE_MIN,
            "compare_max": COMPARE_MAX,
        }
        return render(request, "benchmarks/list.html", context)


class BenchmarkStartView(ConsoleViewMixin, View):
    """GET: the form (?deployment=<pk> chooses the deployment and fills its preset). POST with `preset`: the form
    again with the chosen deployment's preset. POST: start the run and open its page."""

    def authorize(self, request, kwargs) -> None:
        if not may_use_some_deployment(request.user):
            raise ActionDenied(request.user, roles.USE_DEPLOYMENT, model=Deployment)

    @staticmethod
    def make_form(request, data=None, *, initial=None) -> BenchmarkForm:
        return BenchmarkForm(
            data,
            initial=initial,
            deployments=usable_deployments(request.user),
            versions=length_versions(request.user),
        )

    def render_form(self, request, form, *, status: int = 200):
        return render(request, "benchmarks/form.html", {"form": form}, status=status)

    def get(self, request):
        deployments = usable_deployments(request.user)
        initial: dict[str, Any] = {"seed": 0}
        chosen = request.GET.get("deployment", "")
        deployment = deployments.filter(pk=int(chosen)).first() if chosen.isdigit() and len(chosen) < 10 else None
        if deployment is None and len(deployments) == 1:
            deployment = deployments[0]
        if deployment is not None:
            initial.update(form_initial(preset_for(deployment)), deployment=deployment.pk)
        return self.render_form(request, self.make_form(request, initial=initial))

    def post(self, request):
        form = self.make_form(request, request.POST)
        if "preset" in request.POST:
            return self.preset(request, form)
        if not form.is_valid():
            return self.render_form(request, form, status=400)
        data = form.cleaned_data
        try:
            run = services.benchmark_start(
                actor=request.user, deployment=data["deployment"], workload=form.workload(), note=data["note"]
            )
        except ApplicationError as error:
            # The generator names sampling.top_p where the form has top_p.
            field = (error.field or "").removeprefix("sampling.")
            form.add_error(field if field in form.fields else None, error.message)
            return self.render_form(request, form, status=400)
        messages.success(request, _("Benchmark started."))
        return redirect("benchmarks:detail", pk=run.pk)

    def preset(self, request, form):
        """The form filled with the chosen deployment's preset (the note kept); without a usable choice, the form
        as it was with that said."""
        try:
            deployment = form.fields["deployment"].clean(form.data.get("deployment"))
        except ValidationError:
            messages.error(request, _("Choose a running deployment you may use for its preset."))
            initial = {key: form.data.get(key) for key in form.fields if form.data.get(key) not in (None, "")}
            return self.render_form(request, self.make_form(request, initial=initial), status=400)
        initial = {**form_initial(preset_for(deployment)), "deployment": deployment.pk}
        initial["note"] = form.data.get("note", "")
        messages.info(request, _("The form holds the preset for %(name)s.") % {"name": deployment.name})
        return self.render_form(request, self.make_form(request, initial=initial))


def _advice(run: BenchmarkRun) -> dict[str, Any] | None:
    """The tuning loop's suggestions for a finished run with steps (None while it runs or without steps)."""
    if run.is_active or not run.steps.exists():
        return None
    advice = tuning.run_advice(run)
    return {"suggestions": [s.as_dict() for s in advice.suggestions], "notes": list(advice.notes)}


class BenchmarkDetailView(ConsoleViewMixin, View):
    """One run: its workload, state, steps as they finish (live from the job's stream), charts, exports, cancel,
    and once it ended the suggestions with an Apply for those who hold deploy on the deployment."""

    permission_action = roles.VIEW

    def get(self, request, pk):
        run = selectors.benchmark_get(user=request.user, pk=pk)
        steps = list(run.steps.all())
        deployment = run.deployment
        job = run.job
        context = {
            "run": run,
            "deployment": deployment,
            "steps": steps,
            "job": job,
            "can_read_log": job is not None and can_read_job_log(request.user, job),
            "can_cancel": run.is_active and job is not None and can(request.user, roles.USE_DEPLOYMENT, deployment),
            "can_apply": tuning.can_apply(request.user, run),
            "may_deploy": can(request.user, roles.DEPLOY, deployment),
            "advice": _advice(run),
            "reruns": list(run.reruns.order_by("pk").values_list("pk", flat=True)),
            "alerts": list(run.alerts.all()),
            "columns": step_columns(),
            "rows": step_rows(steps, step_columns()),
            "server_columns": server_columns(),
            "server_rows": step_rows(steps, server_columns()) if _scraped(steps) else [],
            "chart_runs": [chart_run(run, steps)],
            "sampling": run.workload.get("sampling") or {},
            "workload_text": workload_text(run.workload or {}),
        }
        return render(request, "benchmarks/detail.html", context)


def _scraped(steps) -> bool:
    return any(getattr(step, name) is not None for step in steps for name in SERVER_FIGURES)


class BenchmarkCancelView(ConsoleViewMixin, View):
    permission_action = roles.VIEW  # use_deployment on the run's deployment: the service's check

    def post(self, request, pk):
        run = selectors.benchmark_get(user=request.user, pk=pk)
        try:
            services.benchmark_cancel(actor=request.user, run=run)
        except ApplicationError as error:
            messages.error(request, error.message)
        else:
            messages.success(request, _("Cancelling: the steps already finished stay."))
        return redirect("benchmarks:detail", pk=run.pk)


class BenchmarkApplyView(ConsoleViewMixin, View):
    """Apply one suggestion of a run: a new spec version (or an approval request) and a re-run of its workload,
    whose page this opens. Deploy on the deployment is the service's check (403 without it)."""

    permission_action = roles.VIEW

    def post(self, request, pk):
        run = selectors.benchmark_get(user=request.user, pk=pk)
        try:
            rerun = tuning.suggestion_apply(actor=request.user, run=run, rule=request.POST.get("rule", ""))
        except ApplicationError as error:
            messages.error(request, error.message)
            return redirect("benchmarks:detail", pk=run.pk)
        messages.success(request, _("Suggestion applied: the same workload runs again on the new version."))
        return redirect("benchmarks:detail", pk=rerun.pk)


def compare_ids(request) -> list[int]:
    """?runs=3,1 in the order given (the first is the baseline), or the list's ticks (?runs=1&runs=3), oldest
    first: the list shows the newest first, and the baseline is the run before the change. Each run once."""
    values = request.GET.getlist("runs")
    ids: list[int] = []
    for value in values:
        for part in value.split(","):
            part = part.strip().lstrip("#")
            if part.isdigit() and len(part) <= MAX_ID_DIGITS and int(part) not in ids:
                ids.append(int(part))
    return sorted(ids) if len(values) > 1 else ids


def run_header(run: BenchmarkRun) -> dict[str, Any]:
    spec = run.spec
    return {
        "run": run,
        "backend": spec.backend if spec else "",  # the short name (tgi, vllm), as the deployment page says it
        "quantize": (spec.get_quantize_display() if spec.quantize else _("none")) if spec else "",
        "kv_cache_dtype": spec.kv_cache_dtype if spec else "",
    }


class BenchmarkCompareView(ConsoleViewMixin, View):
    """Two to six runs side by side: per load level each run's figure, its change against the first run and a
    verdict; the runs' curves overlaid."""

    permission_action = roles.VIEW

    def get(self, request):
        ids = compare_ids(request)
        if not COMPARE_MIN <= len(ids) <= COMPARE_MAX:
            messages.error(
                request,
                _("Choose %(least)d to %(most)d runs to compare.") % {"least": COMPARE_MIN, "most": COMPARE_MAX},
            )
            return redirect("benchmarks:list")
        runs = [selectors.benchmark_get(user=request.user, pk=pk) for pk in ids]
        for run in runs:
            run.step_list = list(run.steps.all())
        comparison = compare.compare_runs(runs).as_dict()
        summaries = {summary["id"]: summary for summary in comparison["runs"]}
        headers = [{**run_header(run), "summary": summaries.get(run.pk)} for run in runs]
        rows = [{**row, "cells": _row_cells(row, comparison["figures"])} for row in comparison["rows"]]
        context = {
            "runs": runs,
            "headers": headers,
            "rows": rows,
            "figures": comparison["figures"],
            "notes": comparison["notes"],
            "noise_percent": comparison["noise_percent"],
            "chart_runs": [chart_run(run, run.step_list) for run in runs],
            "ids": ",".join(str(pk) for pk in ids),
        }
        return render(request, "benchmarks/compare.html", context)


def _number_text(value: float | None, *, signed: bool = False) -> str:
    if value is None:
        return "—"
    text = f"{value:+.1f}" if signed else f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _compare_cell(cell: dict[str, Any], step: dict[str, Any]) -> dict[str, Any]:
    """A run's figure at one load as the compare table shows it: the value, and against the baseline the change
    ("+12.5 (+8.3 %)") and the verdict."""
    delta = ""
    if cell.get("delta") is not None:
        delta = _number_text(cell["delta"], signed=True)
        if cell.get("delta_percent") is not None:
            delta += f" ({_number_text(cell['delta_percent'], signed=True)} %)"
    return {
        **cell,
        "present": step["present"],
        "has_errors": step["has_errors"],
        "value_text": _number_text(cell.get("value")) if step["present"] else "",
        "delta_text": delta,
    }


def _row_cells(row: dict[str, Any], figures: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A load level's table rows: per figure, each run's cell (value, delta, verdict) in the runs' order."""
    labels = figure_labels()
    return [
        {
            "name": figure["name"],
            "label": labels.get(figure["name"], figure["name"]),
            "better": figure["better"],
            "runs": [_compare_cell(step["figures"].get(figure["name"], {}), step) for step in row["steps"]],
        }
        for figure in figures
    ]


def figure_labels() -> dict[str, str]:
    """The figures' names as the tables head them (translated)."""
    return {
        "ttft_ms_p50": _("TTFT p50 (ms)"),
        "ttft_ms_p90": _("TTFT p90 (ms)"),
        "ttft_ms_p99": _("TTFT p99 (ms)"),
        "itl_ms_p50": _("ITL p50 (ms)"),
        "itl_ms_p99": _("ITL p99 (ms)"),
        "e2e_ms_p50": _("E2E p50 (ms)"),
        "e2e_ms_p99": _("E2E p99 (ms)"),
        "output_tokens_per_s": _("Output tokens/s"),
        "total_tokens_per_s": _("Total tokens/s"),
        "requests_per_s": _("Requests/s"),
        "requests_failed": _("Failed requests"),
    }
