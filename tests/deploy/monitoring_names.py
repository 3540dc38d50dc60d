"""The metric names something in the fleet exports (issue 19's contract for the console and the agents' exporters;
serve.py's TGI names and vLLM's, from workers/jobs), and the metric names a PromQL expression reads."""

from __future__ import annotations

import re
from pathlib import Path

from workers.jobs.serve_metrics import VllmMetrics

ROOT = Path(__file__).resolve().parents[2]

# Console /metrics (helper C) and the agent's exporter (helper A), as the contract names them.
CONSOLE_METRICS = {
    "llmdeploy_jobs",
    "llmdeploy_job_queue_depth",
    "llmdeploy_deployments",
    "llmdeploy_deployment_up",
    "llmdeploy_deployment_restarts_total",
    "llmdeploy_deployment_flags",
    "llmdeploy_launches_total",
    "llmdeploy_launch_failures_total",
    "llmdeploy_download_bytes_total",
    "llmdeploy_download_failures_total",
    "llmdeploy_audit_events_total",
    "llmdeploy_audit_checkpoint_age_seconds",
    "llmdeploy_audit_verification_ok",
    "llmdeploy_gateway_requests_total",
    "llmdeploy_gateway_tokens_total",
    "llmdeploy_gateway_errors_total",
    "llmdeploy_host_heartbeat_age_seconds",
    "llmdeploy_host_up",
    "llmdeploy_gpu_health",
    "llmdeploy_inventory_gpu_memory_bytes",
    "llmdeploy_inventory_gpu_reserved_bytes",
    "llmdeploy_integrity_corrupt_artifacts",
    "llmdeploy_healthcheck_findings",
    "llmdeploy_healthcheck_last_run_timestamp_seconds",
}
CONSOLE_HISTOGRAMS = {"llmdeploy_job_duration_seconds", "llmdeploy_gateway_request_duration_seconds"}
AGENT_METRICS = {
    "llmdeploy_gpu_utilization_percent",
    "llmdeploy_gpu_memory_used_bytes",
    "llmdeploy_gpu_memory_total_bytes",
    "llmdeploy_gpu_temperature_celsius",
    "llmdeploy_gpu_power_watts",
    "llmdeploy_gpu_power_limit_watts",
    "llmdeploy_gpu_sm_clock_mhz",
    "llmdeploy_gpu_memory_clock_mhz",
    "llmdeploy_gpu_throttle_reasons",
    "llmdeploy_gpu_thermal_throttle",
    "llmdeploy_gpu_ecc_errors_total",
    "llmdeploy_gpu_retired_pages",
    "llmdeploy_gpu_retired_pages_pending",
    "llmdeploy_gpu_remapped_rows",
    "llmdeploy_gpu_remapped_rows_pending",
    "llmdeploy_gpu_xid_errors_total",
    "llmdeploy_model_store_size_bytes",
    "llmdeploy_model_store_free_bytes",
    "llmdeploy_agent_info",
}
# Prometheus' own: a target's scrape health, and the alerts it evaluates.
PROMETHEUS_SERIES = {"up", "ALERTS"}


def histogram(name: str) -> set[str]:
    return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}


def tgi_metrics() -> set[str]:
    """serve.py's TGI series (counters without _total, as TGI's exporter writes them), from the code that records
    them: an observed name is a histogram."""
    source = "\n".join(path.read_text() for path in sorted((ROOT / "workers" / "jobs").glob("serve*.py")))
    names = set(re.findall(r'"(tgi_[a-z_]+)"', source))
    observed = set(re.findall(r'observe\(\s*"(tgi_[a-z_]+)"', source))
    assert observed and names > observed, "serve.py's metrics moved: update tests/deploy/monitoring_names.py"
    return (names - observed) | set().union(*(histogram(name) for name in observed))


def vllm_metrics() -> set[str]:
    """vLLM's series as vllm_serve.py exposes them (every family is present from the start)."""
    text = VllmMetrics(model_name="m", max_model_len=64, cache_info={"block_size": "16"}, max_loras=1).render()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


KNOWN_METRICS = (
    CONSOLE_METRICS
    | set().union(*(histogram(name) for name in CONSOLE_HISTOGRAMS))
    | AGENT_METRICS
    | PROMETHEUS_SERIES
    | tgi_metrics()
    | vllm_metrics()
)

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^}]*\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_OFFSET = re.compile(r"\boffset\s+-?\w+")
_NUMBER = re.compile(r"(?<![A-Za-z0-9_:])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "Inf", "NaN", "group_left", "group_right"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, keywords, labels or durations)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("{}", text)
    text = _GROUPING.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    text = _NUMBER.sub(" 0 ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or match.group() in _KEYWORDS:
            continue  # a function or aggregation, or an operator
        names.add(match.group())
    return names
