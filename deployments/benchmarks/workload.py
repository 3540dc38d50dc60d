"""A benchmark's workload as the API takes it, checked by the load generator's own spec rules
(workers/jobs/loadgen_spec.py) so the console refuses what the program would, naming the field."""

from __future__ import annotations

from typing import Any

from django.utils.translation import gettext as _

from console.errors import ApplicationError
from workers.jobs.loadgen_spec import DIALECTS, MAX_STEPS, parse_spec
from workers.jobs.protocol import BadInput

SWEEPS = ("concurrency", "rate")
FIELDS = {
    "dialect", "prompt_tokens", "output_tokens", "sweep", "levels", "max_concurrency", "warmup_s",
    "warmup_requests", "duration_s", "requests", "sampling", "seed",
}  # fmt: skip
DEFAULTS = {"dialect": "openai-chat", "sweep": "concurrency", "warmup_s": 0, "warmup_requests": 0, "seed": 0}
# The loadgen's names for what the API calls otherwise.
FIELD_NAMES = {"workload.prompt_tokens": "prompt_tokens", "workload.output_tokens": "output_tokens"}
PLACEHOLDER_URL = "http://gateway.invalid"  # checked shape only: the real address is filled in on the agent's side


def loadgen_spec(workload: dict[str, Any], *, base_url: str, model: str, **extra: Any) -> dict[str, Any]:
    """The load generator's spec for a checked workload."""
    if workload["sweep"] == "concurrency":
        steps = [{"concurrency": level} for level in workload["levels"]]
    else:
        cap = workload.get("max_concurrency")
        steps = [{"rate": level, **({"max_concurrency": cap} if cap else {})} for level in workload["levels"]]
    spec = {
        "base_url": base_url,
        "dialect": workload["dialect"],
        "model": model,
        "workload": {"prompt_tokens": workload["prompt_tokens"], "output_tokens": workload["output_tokens"]},
        "steps": steps,
        "seed": workload["seed"],
        **{key: workload[key] for key in ("warmup_s", "warmup_requests", "duration_s", "requests") if key in workload},
        **extra,
    }
    if workload.get("sampling"):
        spec["sampling"] = workload["sampling"]
    return spec


def _field(name: str | None) -> str:
    name = name or "workload"
    name = FIELD_NAMES.get(name, name)
    return "levels" if name.startswith("steps") else name.split(".", 1)[0] if name.startswith("workload.") else name


def check_workload(raw: Any) -> dict[str, Any]:
    """The workload with defaults filled in, or ApplicationError naming the wrong field."""
    if not isinstance(raw, dict):
        raise ApplicationError(_("The workload must be an object."), field="workload")
    unknown = sorted(str(key) for key in raw if key not in FIELDS)
    if unknown:
        raise ApplicationError(
            _("Unknown workload field(s): %(names)s.") % {"names": ", ".join(unknown)}, field="workload"
        )
    workload = {**DEFAULTS, **{key: value for key, value in raw.items() if value is not None}}
    if workload["dialect"] not in DIALECTS:
        raise ApplicationError(_("Choose a dialect: %(list)s.") % {"list": ", ".join(DIALECTS)}, field="dialect")
    if workload["sweep"] not in SWEEPS:
        raise ApplicationError(_("The sweep is over concurrency or rate."), field="sweep")
    levels = workload.get("levels")
    if not isinstance(levels, list) or not 1 <= len(levels) <= MAX_STEPS:
        raise ApplicationError(
            _("Give the sweep's levels: a list of 1 to %(most)d numbers.") % {"most": MAX_STEPS}, field="levels"
        )
    if "max_concurrency" in workload and workload["sweep"] != "rate":
        raise ApplicationError(_("max_concurrency goes with a sweep of rates only."), field="max_concurrency")
    for key in ("prompt_tokens", "output_tokens"):
        if key not in workload:
            raise ApplicationError(_("This field is required."), field=key)
    if "duration_s" not in workload and "requests" not in workload:
        raise ApplicationError(_("Give each step a duration_s or a number of requests."), field="duration_s")
    if not _storable(workload):
        raise ApplicationError(
            _("The workload holds text the database cannot store (a NUL character)."), field="workload"
        )
    try:
        parse_spec(loadgen_spec(workload, base_url=PLACEHOLDER_URL, model="model"))
    except BadInput as error:
        raise ApplicationError(error.message, field=_field(error.field)) from None
    except (OverflowError, ValueError, TypeError, RecursionError):
        # A number too large for a float or a shape the rules did not foresee: refused, never a server error.
        raise ApplicationError(
            _("The workload could not be read: check its numbers and shapes."), field="workload"
        ) from None
    return workload


def _storable(value: Any, depth: int = 0) -> bool:
    """No NUL anywhere (PostgreSQL's jsonb refuses it) and no deeper nesting than a workload has."""
    if depth > 8:
        return False
    if isinstance(value, str):
        return "\x00" not in value
    if isinstance(value, dict):
        return all(_storable(k, depth + 1) and _storable(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return all(_storable(item, depth + 1) for item in value)
    return True


def estimated_seconds(workload: dict[str, Any]) -> float | None:
    """How long the sweep takes when every step has a duration; None when steps count requests."""
    if workload.get("requests") or not workload.get("duration_s"):
        return None
    return len(workload["levels"]) * (float(workload["duration_s"]) + float(workload.get("warmup_s") or 0))
