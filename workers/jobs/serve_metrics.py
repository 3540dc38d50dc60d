"""The development servers' /metrics as Prometheus text.

`Metrics` is serve.py's, with TGI's metric names (TGI 3.3's router metrics): counters carry no `_total` suffix
(TGI's exporter adds none); histograms have `_bucket`, `_sum` and `_count`; a series appears once it was first
touched, as in TGI. `VllmMetrics` is vllm_serve.py's, with vLLM's names (the V1 engine's PrometheusStatLogger,
vllm/v1/metrics/loggers.py) in prometheus_client's exposition: `# HELP`/`# TYPE` lines, counters as `_total`
with a `_created` twin, labels `engine` and `model_name` sorted, every series present from the start at zero.
Imports nothing from Django.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

# 35 geometric steps from 0.00015 s by 1.5, as TGI's exporter uses for names ending in "duration".
DURATION_BUCKETS = tuple(0.00015 * 1.5**n for n in range(35))


def _linear(top: int, steps: int = 100) -> tuple[float, ...]:
    top = max(top, steps)
    return tuple(top * (n + 1) / steps for n in range(steps))


def _labels(labels: tuple[tuple[str, str], ...], extra: str = "") -> str:
    parts = [f'{key}="{value}"' for key, value in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _le(bound: str) -> str:
    return 'le="' + bound + '"'


class Metrics:
    def __init__(self, *, max_input_tokens: int, max_total_tokens: int) -> None:
        self.lock = threading.Lock()
        self.counters: dict[tuple[str, tuple], float] = defaultdict(float)
        self.gauges: dict[tuple[str, tuple], float] = {}
        self.histograms: dict[tuple[str, tuple], list] = {}
        self.buckets = {
            "tgi_request_input_length": _linear(max_input_tokens),
            "tgi_request_generated_tokens": _linear(max_total_tokens),
            "tgi_request_max_new_tokens": _linear(max_total_tokens),
            "tgi_batch_next_size": tuple(float(2**n) for n in range(11)),
        }

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        with self.lock:
            self.counters[(name, tuple(sorted(labels.items())))] += value

    def set(self, name: str, value: float, **labels: str) -> None:
        with self.lock:
            self.gauges[(name, tuple(sorted(labels.items())))] = value

    def observe(self, name: str, value: float, **labels: str) -> None:
        buckets = self.buckets.get(name, DURATION_BUCKETS)
        key = (name, tuple(sorted(labels.items())))
        with self.lock:
            counts = self.histograms.setdefault(key, [[0] * len(buckets), 0.0, 0])
            for i, bound in enumerate(buckets):
                if value <= bound:
                    counts[0][i] += 1
            counts[1] += value
            counts[2] += 1

    def batch_inference(self, method: str, seconds: float, *, tokens: int = 0) -> None:
        self.inc("tgi_batch_inference_count", method=method)
        self.inc("tgi_batch_inference_success", method=method)
        self.observe("tgi_batch_inference_duration", seconds, method=method)
        self.observe("tgi_batch_forward_duration", seconds, method=method)

    def render(self) -> str:
        lines: list[str] = []
        with self.lock:
            for (name, labels), value in sorted(self.counters.items()):
                lines.append(f"{name}{_labels(labels)} {value:g}")
            for (name, labels), value in sorted(self.gauges.items()):
                lines.append(f"{name}{_labels(labels)} {value:g}")
            for (name, labels), (counts, total, count) in sorted(self.histograms.items()):
                buckets = self.buckets.get(name, DURATION_BUCKETS)
                for bound, n in zip(buckets, counts, strict=True):
                    lines.append(f"{name}_bucket{_labels(labels, _le(f'{bound:g}'))} {n}")
                lines.append(f"{name}_bucket{_labels(labels, _le('+Inf'))} {count}")
                lines.append(f"{name}_sum{_labels(labels)} {total:g}")
                lines.append(f"{name}_count{_labels(labels)} {count}")
        return "\n".join(lines) + "\n"


# -- vLLM -----------------------------------------------------------------------------------------------------------
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
                80.0)  # fmt: skip
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
                   480.0, 960.0, 1920.0, 7680.0)  # fmt: skip
ITERATION_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")  # vLLM's FinishReason, as label values


def buckets_1_2_5(top: int) -> tuple[int, ...]:
    """1, 2, 5, 10, 20, 50, ... up to `top` (vLLM's build_1_2_5_buckets)."""
    out, scale = [], 1
    while True:
        for mantissa in (1, 2, 5):
            if mantissa * scale > top:
                return tuple(out)
            out.append(mantissa * scale)
        scale *= 10


@dataclass
class _Family:
    name: str
    kind: str  # counter, gauge or histogram
    help: str
    buckets: tuple = ()
    series: dict = field(default_factory=dict)  # sorted label items -> value, or [bucket counts, sum, count]
    created: dict = field(default_factory=dict)


def _go_float(value: float) -> str:
    """prometheus_client's number format (floatToGoString)."""
    if value == float("inf"):
        return "+Inf"
    if value == float("-inf"):
        return "-Inf"
    return repr(float(value))


def _sorted_labels(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


class VllmMetrics:
    """vLLM's Prometheus metrics for one engine (engine="0") serving `model_name`."""

    def __init__(self, *, model_name: str, max_model_len: int, cache_info: dict[str, str], max_loras: int | None):
        self.lock = threading.Lock()
        self.base = {"model_name": model_name, "engine": "0"}
        self.families: dict[str, _Family] = {}
        lengths = buckets_1_2_5(max_model_len)
        for name, kind, text, buckets in (
            ("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.", ()),
            ("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.", ()),
            ("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.", ()),
            ("vllm:prefix_cache_queries", "counter", "Prefix cache queries, in terms of number of queried tokens.", ()),
            ("vllm:prefix_cache_hits", "counter", "Prefix cache hits, in terms of number of cached tokens.", ()),
            ("vllm:num_preemptions", "counter", "Cumulative number of preemption from the engine.", ()),
            ("vllm:prompt_tokens", "counter", "Number of prefill tokens processed.", ()),
            ("vllm:generation_tokens", "counter", "Number of generation tokens processed.", ()),
            ("vllm:request_prompt_tokens", "histogram", "Number of prefill tokens processed.", lengths),
            ("vllm:request_generation_tokens", "histogram", "Number of generation tokens processed.", lengths),
            ("vllm:iteration_tokens_total", "histogram", "Histogram of number of tokens per engine_step.",
             ITERATION_BUCKETS),
            ("vllm:request_max_num_generation_tokens", "histogram",
             "Histogram of maximum number of requested generation tokens.", lengths),
            ("vllm:request_params_n", "histogram", "Histogram of the n request parameter.", (1, 2, 5, 10, 20)),
            ("vllm:request_params_max_tokens", "histogram", "Histogram of the max_tokens request parameter.", lengths),
            ("vllm:time_to_first_token_seconds", "histogram", "Histogram of time to first token in seconds.",
             TTFT_BUCKETS),
            ("vllm:inter_token_latency_seconds", "histogram", "Histogram of inter-token latency in seconds.",
             TPOT_BUCKETS),
            ("vllm:request_time_per_output_token_seconds", "histogram",
             "Histogram of time_per_output_token_seconds per request.", TPOT_BUCKETS),
            ("vllm:e2e_request_latency_seconds", "histogram", "Histogram of e2e request latency in seconds.",
             LATENCY_BUCKETS),
            ("vllm:request_queue_time_seconds", "histogram", "Histogram of time spent in WAITING phase for request.",
             LATENCY_BUCKETS),
            ("vllm:request_inference_time_seconds", "histogram",
             "Histogram of time spent in RUNNING phase for request.", LATENCY_BUCKETS),
            ("vllm:request_prefill_time_seconds", "histogram", "Histogram of time spent in PREFILL phase for request.",
             LATENCY_BUCKETS),
            ("vllm:request_decode_time_seconds", "histogram", "Histogram of time spent in DECODE phase for request.",
             LATENCY_BUCKETS),
            ("vllm:request_num_preemptions", "histogram",
             "Histogram of the number of times a request was preempted.", (1, 2, 3, 4, 5, 10, 20)),
            ("vllm:request_prefill_kv_computed_tokens", "histogram",
             "Histogram of new KV tokens computed during prefill (excluding cached tokens).", lengths),
        ):  # fmt: skip
            self._declare(name, kind, text, buckets)
            self._touch(name, {})
        self._declare(
            "vllm:num_requests_waiting_by_reason",
            "gauge",
            "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for scheduling capacity; "
            "'deferred' = deferred by transient constraints (LoRA budget, KV transfer, blocked status). Sum of all "
            "reasons equals vllm:num_requests_waiting.",
        )
        for reason in ("capacity", "deferred"):
            self.set("vllm:num_requests_waiting_by_reason", 0, reason=reason)
        self._declare(
            "vllm:engine_sleep_state",
            "gauge",
            "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is awake; "
            "weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.",
        )
        for state, value in (("awake", 1), ("weights_offloaded", 0), ("discard_all", 0)):
            self.set("vllm:engine_sleep_state", value, sleep_state=state)
        self._declare("vllm:request_success", "counter", "Count of successfully processed requests.")
        for reason in FINISH_REASONS:
            self._touch("vllm:request_success", {"finished_reason": reason})
        self._declare("vllm:cache_config_info", "gauge", "Information of the LLMEngine CacheConfig")
        self.set("vllm:cache_config_info", 1, _base=False, **cache_info, engine="0")
        self.max_loras = max_loras
        if max_loras is not None:
            self._declare("vllm:lora_requests_info", "gauge", "Running stats on lora requests.")

    # -- recording ------------------------------------------------------------------------------------------------
    def _declare(self, name: str, kind: str, text: str, buckets: tuple = ()) -> None:
        self.families[name] = _Family(name, kind, text, tuple(buckets))

    def _key(self, labels: dict[str, str], base: bool = True) -> tuple:
        return _sorted_labels({**(self.base if base else {}), **labels})

    def _touch(self, name: str, labels: dict[str, str]) -> None:
        family = self.families[name]
        key = self._key(labels)
        if key not in family.series:
            family.created[key] = time.time()
            family.series[key] = [[0] * len(family.buckets), 0.0, 0] if family.kind == "histogram" else 0.0

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        with self.lock:
            self._touch(name, labels)
            self.families[name].series[self._key(labels)] += value

    def set(self, name: str, value: float, *, _base: bool = True, **labels: str) -> None:
        with self.lock:
            family = self.families[name]
            key = self._key(labels, _base)
            family.created.setdefault(key, time.time())
            family.series[key] = value

    def observe(self, name: str, value: float, **labels: str) -> None:
        with self.lock:
            self._touch(name, labels)
            family = self.families[name]
            counts = family.series[self._key(labels)]
            for i, bound in enumerate(family.buckets):
                if value <= bound:
                    counts[0][i] += 1
            counts[1] += value
            counts[2] += 1

    def total(self, name: str) -> float:
        """A counter's or gauge's sum over its series."""
        with self.lock:
            return float(sum(self.families[name].series.values()))

    def batch_inference(self, method: str, seconds: float, *, tokens: int = 0) -> None:
        """The engine's steps: tokens per step, as vLLM's iteration histogram counts them."""
        self.observe("vllm:iteration_tokens_total", tokens)

    def lora_info(self, running: list[str], waiting: list[str]) -> None:
        if self.max_loras is None:
            return
        with self.lock:
            family = self.families["vllm:lora_requests_info"]
            family.series.clear()  # one series: the current adapters, set to the time (as vLLM's set_to_current_time)
            key = _sorted_labels(
                {
                    "max_lora": str(self.max_loras),
                    "running_lora_adapters": ",".join(running),
                    "waiting_lora_adapters": ",".join(waiting),
                }
            )
            family.series[key] = time.time()

    # -- exposition --------------------------------------------------------------------------------------------
    def render(self) -> str:
        lines: list[str] = []
        with self.lock:
            for family in self.families.values():
                if family.kind == "counter":
                    self._render_counter(family, lines)
                elif family.kind == "gauge":
                    self._header(lines, family.name, family.help, "gauge")
                    for key, value in family.series.items():
                        lines.append(f"{family.name}{_text(key)} {_go_float(value)}")
                else:
                    self._render_histogram(family, lines)
        return "\n".join(lines) + "\n"

    @staticmethod
    def _header(lines: list[str], name: str, text: str, kind: str) -> None:
        lines.append(f"# HELP {name} {text}")
        lines.append(f"# TYPE {name} {kind}")

    def _render_counter(self, family: _Family, lines: list[str]) -> None:
        self._header(lines, f"{family.name}_total", family.help, "counter")
        for key, value in family.series.items():
            lines.append(f"{family.name}_total{_text(key)} {_go_float(value)}")
        self._header(lines, f"{family.name}_created", family.help, "gauge")
        for key, created in family.created.items():
            lines.append(f"{family.name}_created{_text(key)} {_go_float(created)}")

    def _render_histogram(self, family: _Family, lines: list[str]) -> None:
        self._header(lines, family.name, family.help, "histogram")
        for key, (counts, total, count) in family.series.items():
            for bound, n in zip(family.buckets, counts, strict=True):
                lines.append(f"{family.name}_bucket{_text(key, le=_go_float(bound))} {_go_float(n)}")
            lines.append(f"{family.name}_bucket{_text(key, le='+Inf')} {_go_float(count)}")
            lines.append(f"{family.name}_count{_text(key)} {_go_float(count)}")
            lines.append(f"{family.name}_sum{_text(key)} {_go_float(total)}")
        self._header(lines, f"{family.name}_created", family.help, "gauge")
        for key, created in family.created.items():
            lines.append(f"{family.name}_created{_text(key)} {_go_float(created)}")


def _text(key: tuple[tuple[str, str], ...], **extra: str) -> str:
    items = sorted((*key, *extra.items()))
    if not items:
        return ""
    escaped = (value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') for _, value in items)
    return "{" + ",".join(f'{name}="{value}"' for (name, _), value in zip(items, escaped, strict=True)) + "}"
