"""Benchmark runs side by side (issue 17, point 4): their steps lined up by load (the same concurrency, or the
same request rate), each figure beside the first run's with the difference, and a verdict per figure.

Pure: runs come in as BenchmarkRun rows (with their steps) or as plain dicts shaped like the API's detail (`id`,
`steps`: [{concurrency, rate, <figures>, has_errors, errors}], optional `deployment_name`, `spec_version`,
`workload`...); nothing here reads the database beyond the rows' own steps.

The verdicts:
- each figure has a better direction: more tokens and requests per second is better; less time to the first
  token, between tokens and to the end, and fewer failed requests, is better;
- a difference within NOISE_PERCENT of the first run's value is "same": two runs of one deployment with one
  workload differ by a few percent from scheduling, clocks and GPU boost alone, and 5 % is the agreement the
  issue asks of the figures against an independent client, so a smaller change is not evidence of anything;
- a step that had errors is never judged "better": its latencies and rates count the successful streams only,
  so a server that failed the slow requests would look faster. Its better-looking figures read "same" with the
  reason said; worse ones stay worse.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.utils.translation import gettext as _

NOISE_PERCENT = 5.0
HIGHER_BETTER = ("output_tokens_per_s", "total_tokens_per_s", "requests_per_s")
LOWER_BETTER = (
    "ttft_ms_p50", "ttft_ms_p90", "ttft_ms_p99", "itl_ms_p50", "itl_ms_p99", "e2e_ms_p50", "e2e_ms_p99",
    "requests_failed",
)  # fmt: skip
FIGURES = HIGHER_BETTER + LOWER_BETTER
BETTER, WORSE, SAME = "better", "worse", "same"
MIXED, NO_COMMON_STEP = "mixed", "incomparable"  # summary verdicts only
MAX_RUNS = 6


@dataclass(frozen=True)
class Cell:
    """One figure of one run at one load: its value, and against the first run's, the change and the verdict
    (None for the first run itself, or where either value is missing)."""

    value: float | None
    delta: float | None = None
    delta_percent: float | None = None
    verdict: str | None = None
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "delta": self.delta,
            "delta_percent": self.delta_percent,
            "verdict": self.verdict,
            "reason": self.reason,
        }


@dataclass
class StepColumn:
    """A run's step at one load (absent where the run had no step there)."""

    run: Any
    present: bool
    has_errors: bool = False
    errors: dict[str, int] = field(default_factory=dict)
    figures: dict[str, Cell] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "present": self.present,
            "has_errors": self.has_errors,
            "errors": self.errors,
            "figures": {name: cell.as_dict() for name, cell in self.figures.items()},
        }


@dataclass
class Row:
    """One load level: "concurrency" 4, or "rate" 2.0 requests/s; a column per run, in the runs' order."""

    load: str
    level: float
    label: str
    columns: list[StepColumn]

    def as_dict(self) -> dict[str, Any]:
        return {
            "load": self.load,
            "level": self.level,
            "label": self.label,
            "steps": [column.as_dict() for column in self.columns],
        }


@dataclass
class RunSummary:
    """A run against the first: how many figures got better, worse or stayed the same over the loads both ran,
    and the verdict in one word (better, worse, same, mixed; incomparable without a common load)."""

    run: dict[str, Any]
    verdict: str | None = None
    better: int = 0
    worse: int = 0
    same: int = 0
    common_steps: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.run,
            "verdict": self.verdict,
            "counts": {BETTER: self.better, WORSE: self.worse, SAME: self.same},
            "common_steps": self.common_steps,
        }


@dataclass
class Comparison:
    runs: list[RunSummary]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    noise_percent: float = NOISE_PERCENT

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: for the API and the templates."""
        return {
            "noise_percent": self.noise_percent,
            "figures": [{"name": name, "better": direction(name)} for name in FIGURES],
            "runs": [summary.as_dict() for summary in self.runs],
            "rows": [row.as_dict() for row in self.rows],
            "notes": self.notes,
        }


def direction(name: str) -> str:
    """Which way a figure improves: "higher" or "lower"."""
    return "higher" if name in HIGHER_BETTER else "lower"


def verdict(name: str, base: float | None, value: float | None, *, has_errors: bool = False) -> Cell:
    """`value` of figure `name` against `base`, the first run's (see the module's docstring for the rules)."""
    if value is None or base is None:
        return Cell(value)
    delta = value - base
    percent = None if base == 0 else 100.0 * delta / abs(base)
    if delta == 0 or (percent is not None and abs(percent) <= NOISE_PERCENT):
        return Cell(value, delta, percent, SAME)
    improved = delta > 0 if name in HIGHER_BETTER else delta < 0
    if improved and has_errors:
        reason = _("This step had failed requests: its figures leave them out, so it is not judged better.")
        return Cell(value, delta, percent, SAME, reason)
    return Cell(value, delta, percent, BETTER if improved else WORSE)


def compare_runs(runs: Sequence[Any]) -> Comparison:
    """Line up the runs' steps by load and judge every figure against the first run's (the baseline)."""
    plain = [_plain_run(run) for run in runs]
    keys = sorted({key for run in plain for key in run["steps"]}, key=lambda key: (key[0] != "concurrency", key[1]))
    rows = []
    summaries = [RunSummary(run=_header(run)) for run in plain]
    for load, level in keys:
        base_step = plain[0]["steps"].get((load, level)) if plain else None
        columns = []
        for position, run in enumerate(plain):
            step = run["steps"].get((load, level))
            if step is None:
                columns.append(StepColumn(run=run["id"], present=False))
                continue
            has_errors = bool(step.get("has_errors")) or bool(step.get("requests_failed"))
            cells = {}
            for name in FIGURES:
                value = _figure(step.get(name))
                if position == 0 or base_step is None:
                    cells[name] = Cell(value)
                else:
                    cells[name] = verdict(name, _figure(base_step.get(name)), value, has_errors=has_errors)
            columns.append(StepColumn(run["id"], True, has_errors, dict(step.get("errors") or {}), cells))
            if position and base_step is not None:
                _count(summaries[position], cells.values())
        rows.append(Row(load, level, _label(load, level), columns))
    for summary in summaries[1:]:
        summary.verdict = _summary_verdict(summary)
    return Comparison(summaries, rows, _notes(plain))


def _count(summary: RunSummary, cells: Iterable[Cell]) -> None:
    summary.common_steps += 1
    for cell in cells:
        if cell.verdict == BETTER:
            summary.better += 1
        elif cell.verdict == WORSE:
            summary.worse += 1
        elif cell.verdict == SAME:
            summary.same += 1


def _summary_verdict(summary: RunSummary) -> str:
    if not summary.common_steps:
        return NO_COMMON_STEP
    if summary.better and summary.worse:
        return MIXED
    if summary.better:
        return BETTER
    if summary.worse:
        return WORSE
    return SAME


def _notes(runs: list[dict[str, Any]]) -> list[str]:
    """What a reader must know before trusting the deltas: runs of different workloads measure different things."""
    notes = []
    if len(runs) > 1:
        shape = _workload_shape(runs[0]["workload"])
        differing = [str(run["id"]) for run in runs[1:] if _workload_shape(run["workload"]) != shape]
        if differing:
            notes.append(
                _(
                    "Run(s) %(runs)s sent a different workload (prompt or output length, dialect or sampling) "
                    "than run %(first)s: their figures differ for that reason too."
                )
                % {"runs": ", ".join(differing), "first": runs[0]["id"]}
            )
    for run in runs:
        if not run["steps"]:
            notes.append(_("Run %(run)s has no step yet.") % {"run": run["id"]})
    return notes


def _workload_shape(workload: dict[str, Any]) -> tuple:
    keys = ("dialect", "prompt_tokens", "output_tokens", "sampling")
    return tuple(repr(workload.get(key)) for key in keys) if workload else ()


def _label(load: str, level: float) -> str:
    if load == "concurrency":
        return _("concurrency %(n)s") % {"n": f"{level:g}"}
    return _("%(rate)s requests/s") % {"rate": f"{level:g}"}


def _figure(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if value == value and abs(value) != float("inf") else None


# --- runs as plain values --------------------------------------------------------------------------------------

HEADER_FIELDS = ("id", "deployment", "deployment_name", "spec_version", "state", "note", "created_at", "baseline")


def _plain_run(run: Any) -> dict[str, Any]:
    """A run as {"id", header fields..., "workload", "steps": {(load, level): step dict}}."""
    if isinstance(run, dict):
        header = {key: run.get(key) for key in HEADER_FIELDS}
        steps: Iterable[Any] = run.get("steps") or []
        workload = run.get("workload") or {}
    else:
        header = {
            "id": run.pk,
            "deployment": run.deployment_id,
            "deployment_name": run.deployment.name if run.deployment_id else None,
            "spec_version": run.spec.version if run.spec_id else None,
            "state": run.state,
            "note": run.note,
            "created_at": run.created_at.isoformat() if run.created_at else None,
            "baseline": run.baseline_id,
        }
        steps = [_step_dict(step) for step in run.steps.all()]
        workload = run.workload or {}
    by_load: dict[tuple[str, float], dict[str, Any]] = {}
    for step in steps:
        key = _load_key(step)
        if key is not None and key not in by_load:  # one step per load: a sweep repeating a level keeps the first
            by_load[key] = step
    return {**header, "workload": workload if isinstance(workload, dict) else {}, "steps": by_load}


def _step_dict(step: Any) -> dict[str, Any]:
    names = (*FIGURES, "concurrency", "rate", "has_errors", "errors", "index")
    return {name: getattr(step, name, None) for name in names}


def _load_key(step: dict[str, Any]) -> tuple[str, float] | None:
    if step.get("concurrency") not in (None, 0):
        return ("concurrency", float(step["concurrency"]))
    if step.get("rate") not in (None, 0):
        return ("rate", float(step["rate"]))
    return None


def _header(run: dict[str, Any]) -> dict[str, Any]:
    return {key: run.get(key) for key in HEADER_FIELDS}
