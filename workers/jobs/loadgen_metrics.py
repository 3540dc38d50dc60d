"""The model server's own view of a benchmark step: the load generator samples each server's Prometheus `/metrics`
while the step runs and reports the server figures of deployments/benchmarks/models.SERVER_FIGURES, so a step
shows whether time went to queueing or to compute, and whether the server's per-token time agrees with the one
the client measured.

Two dialects, told apart by the names in the exposition:
- TGI (router 3.x, text-generation-inference router/src/server.rs and backends/v3/src/backend.rs): gauges
  tgi_queue_size, tgi_batch_current_size, tgi_batch_current_max_tokens (the running batch's token budget);
  histograms tgi_request_queue_duration, tgi_batch_inference_duration{method="prefill"} (one prefill batch: its
  forward, decode and filtering, as the router times it) and tgi_request_mean_time_per_token_duration (per
  request: inference time / generated tokens). TGI has no KV-cache gauge: see KV fill below.
- vLLM (V1 engine, vllm/v1/metrics/loggers.py): gauges vllm:num_requests_waiting, vllm:num_requests_running,
  vllm:kv_cache_usage_perc (vllm:gpu_cache_usage_perc before 0.10); histograms vllm:request_queue_time_seconds,
  vllm:request_prefill_time_seconds, vllm:inter_token_latency_seconds (vllm:time_per_output_token_seconds before
  it was renamed) and vllm:iteration_tokens_total (tokens per engine step: vLLM's batch tokens).

Figures: gauges are sampled every PERIOD_S; a sample sums each gauge over every server (a deployment's replicas)
and every engine of a server (the `engine` label), the KV fill excepted (its largest). `queue_size` and
`batch_size` are the means of the samples inside the step's measurement window, `*_max` their peaks,
`batch_tokens` the peak of TGI's batch token gauge (vLLM: the largest mean tokens per engine step between two
samples). The `server_*_ms_mean` figures are the step's own: each histogram's _sum and _count at the step's start
and end, the differences summed over the servers (sum / count). They cover the whole step, warm-up included: the
server counts a request when it ends, and warm-up requests end inside the window.

Sampling runs in a thread with plain blocking HTTP (http.client, one keep-alive connection per server), not in
the generator's event loop: a slow /metrics (a busy server answers it late) then never holds up the loop's reads,
and the tokens' times are the kernel's receive stamps (loadgen_http.py), so the thread's share of the GIL can
delay when the generator handles a read (it shows in generator_lag_ms_*) but not the measured TTFT or ITL. The
parse keeps only lines of the names above (a vLLM exposition has hundreds of bucket lines), so a sample costs
well under a millisecond of the interpreter's time.

KV fill for TGI: the spec's `kv_budgets` give a metrics URL's capacity in tokens (the console reads it from the
router's warm-up line `Setting max batch total tokens to N` in the server's log); without one, where the server's
/info (the metrics URL's base, read once) reports max_batch_total_tokens (TGI 1.x and early 2.x did, serve.py does;
TGI 3.x's Info has no such field), each sample's KV fill is the batch token gauge over it. That is the share of
the batch's token budget filled, which is what TGI's KV cache holds (warm-up sizes max_batch_total_tokens to the
KV blocks the memory allows); without it `kv_cache_usage_max` stays None and `kv_cache_usage_error` says why (the
tuning engine then estimates the budget with the planner).

With `gpu_indexes` the same thread reads the server's GPUs through NVML at each tick (loadgen_gpu.py).

A server that cannot be read never fails the run: its figures stay None and the step's `server_metrics_error`
says why.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from workers.jobs.loadgen_gpu import GpuUtilization

PERIOD_S = 0.5
TIMEOUT_S = 2.0
MAX_BODY = 8 * 1024 * 1024
NS_PER_S = 1_000_000_000

# Client ITL mean vs the server's per-token mean: they disagree beyond max(REL * server, ABS_MS). A constant network
# delay cancels out of a mean gap (both ends of a stream are shifted alike), but the client's gaps still carry the
# gateway's and SSE framing's jitter, and the servers define theirs a little differently: TGI's is a request's
# inference time over its generated tokens (the prefill spread over them), both histograms count the warm-up
# requests the client leaves out. 25 % holds all of that at the outputs of tens of tokens a benchmark uses, and
# still flags a client (or server) figure that is off by a factor.
TIMING_TOLERANCE_REL = 0.25
TIMING_TOLERANCE_ABS_MS = 2.0

TGI = {
    "queue": "tgi_queue_size",
    "batch": "tgi_batch_current_size",
    "batch_tokens": "tgi_batch_current_max_tokens",
}
TGI_HISTOGRAMS = {
    "queue": ("tgi_request_queue_duration", None),
    "prefill": ("tgi_batch_inference_duration", ("method", "prefill")),
    "itl": ("tgi_request_mean_time_per_token_duration", None),
}
VLLM = {
    "queue": "vllm:num_requests_waiting",
    "batch": "vllm:num_requests_running",
}
VLLM_KV = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")  # the first one present
VLLM_HISTOGRAMS = {
    "queue": (("vllm:request_queue_time_seconds",), None),
    "prefill": (("vllm:request_prefill_time_seconds",), None),
    "itl": (("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"), None),
    "step_tokens": (("vllm:iteration_tokens_total",), None),
}
WANTED = (
    *TGI.values(),
    *(f"{name}_{end}" for name, _ in TGI_HISTOGRAMS.values() for end in ("sum", "count")),
    *VLLM.values(),
    *VLLM_KV,
    *(f"{name}_{end}" for names, _ in VLLM_HISTOGRAMS.values() for name in names for end in ("sum", "count")),
)
_PREFIXES = tuple(sorted({name.split("{")[0] for name in WANTED}))
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')

Series = dict[str, list[tuple[dict[str, str], float]]]


def parse_exposition(text: str, names: tuple[str, ...] | None = _PREFIXES) -> Series:
    """Prometheus text format: {metric name: [(labels, value)]} for the lines whose name starts with one of
    `names` (None: every line). Comments, blank lines and unparsable lines are skipped."""
    series: Series = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] == "#" or (names and not line.startswith(names)):
            continue
        parsed = _sample(line)
        if parsed is not None:
            series.setdefault(parsed[0], []).append(parsed[1:])
    return series


def _sample(line: str) -> tuple[str, dict[str, str], float] | None:
    labels: dict[str, str] = {}
    brace = line.find("{")
    if brace >= 0:
        name, close = line[:brace], line.rfind("}")
        if close < brace:
            return None
        body, rest = line[brace + 1 : close], line[close + 1 :]
        position = 0
        while position < len(body):
            match = _LABEL.match(body, position)
            if not match:
                return None
            labels[match[1]] = match[2].replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
            position = match.end()
    else:
        name, _, rest = line.partition(" ")
    fields = rest.split()
    if not name or not fields:
        return None
    try:
        value = float(fields[0])  # a timestamp may follow; "NaN", "+Inf" parse too
    except ValueError:
        return None
    return name.strip(), labels, value


def _total(series: Series, name: str, label: tuple[str, str] | None = None) -> float | None:
    """The sum over a name's series (the `engine`s of a vLLM server), or None when it is absent."""
    values = [v for labels, v in series.get(name, ()) if label is None or labels.get(label[0]) == label[1]]
    values = [v for v in values if v == v]  # NaN: not a reading
    return sum(values) if values else None


@dataclass
class Reading:
    """One server at one moment: its gauges and its histograms' (sum, count)."""

    dialect: str
    gauges: dict[str, float | None]
    histograms: dict[str, tuple[float, float]] = field(default_factory=dict)


def reading_of(series: Series) -> Reading | None:
    """What one exposition says, in either dialect; None when it holds neither TGI's nor vLLM's names."""
    if any(name.startswith("vllm:") for name in series):
        gauges = {key: _total(series, name) for key, name in VLLM.items()}
        kv = next((series[name] for name in VLLM_KV if name in series), [])
        kv_values = [v for _, v in kv if v == v]
        gauges["kv"] = max(kv_values) if kv_values else None
        histograms = {}
        for key, (names, label) in VLLM_HISTOGRAMS.items():
            name = next((n for n in names if f"{n}_count" in series), None)
            if name:
                histograms[key] = (_total(series, f"{name}_sum", label) or 0.0, _total(series, f"{name}_count", label))
        return Reading("vllm", gauges, {k: v for k, v in histograms.items() if v[1] is not None})
    if any(name.startswith("tgi_") for name in series):
        gauges = {key: _total(series, name) for key, name in TGI.items()}
        gauges["kv"] = None
        histograms = {}
        for key, (name, label) in TGI_HISTOGRAMS.items():
            count = _total(series, f"{name}_count", label)
            if count is not None:
                histograms[key] = (_total(series, f"{name}_sum", label) or 0.0, count)
        return Reading("tgi", gauges, histograms)
    return None


class _Server:
    """One /metrics URL with its keep-alive connection, its first and last reading and its failures."""

    def __init__(self, url: str, tls_verify: bool, kv_budget: int | None = None) -> None:
        parts = urlsplit(url)
        self.url, self.https = url, parts.scheme == "https"
        self.host, self.port = parts.hostname or "", parts.port
        self.path = (parts.path or "/metrics") + (f"?{parts.query}" if parts.query else "")
        self.context = None
        if self.https:
            self.context = ssl.create_default_context()
            if not tls_verify:
                self.context.check_hostname = False
                self.context.verify_mode = ssl.CERT_NONE
        self.connection: http.client.HTTPConnection | None = None
        self.first: Reading | None = None
        self.last: Reading | None = None
        self.failures = 0
        self.error = ""
        self.kv_budget: float | None = float(kv_budget) if kv_budget else None  # TGI: the capacity in tokens
        self.kv_error = ""
        self.info_read = self.kv_budget is not None  # given (the router's warm-up line): /info is not asked

    def _connect(self) -> http.client.HTTPConnection:
        if self.https:
            return http.client.HTTPSConnection(self.host, self.port, timeout=TIMEOUT_S, context=self.context)
        return http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT_S)

    def read(self) -> Reading | None:
        try:
            if self.connection is None:
                self.connection = self._connect()
            self.connection.request("GET", self.path, headers={"Accept": "text/plain"})
            response = self.connection.getresponse()
            body = response.read(MAX_BODY + 1)
            if response.status != 200:
                raise OSError(f"HTTP {response.status}")
            if len(body) > MAX_BODY:
                raise OSError("the exposition is over 8 MiB")
            reading = reading_of(parse_exposition(body.decode("utf-8", "replace")))
            if reading is None:
                raise OSError("no TGI or vLLM metrics in it")
            if reading.dialect == "tgi":
                self._tgi_kv_fill(reading)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self.close()
            self.failures += 1
            self.error = str(exc) or type(exc).__name__
            return None
        self.first = self.first or reading
        self.last = reading
        return reading

    def _tgi_kv_fill(self, reading: Reading) -> None:
        """The batch's token budget filled (tgi_batch_current_max_tokens / max_batch_total_tokens, 0..1): what
        TGI's KV cache holds, TGI having no gauge of the cache itself. The budget comes from /info, read once."""
        if not self.info_read:
            self.info_read = True
            self.kv_budget, self.kv_error = self._budget()
        tokens = reading.gauges.get("batch_tokens")
        if self.kv_budget and tokens is not None:
            reading.gauges["kv"] = min(max(tokens / self.kv_budget, 0.0), 1.0)

    def _budget(self) -> tuple[float | None, str]:
        info = self.path.split("?")[0].rsplit("/", 1)[0] + "/info"
        where = f"{'https' if self.https else 'http'}://{self.host}{f':{self.port}' if self.port else ''}{info}"
        try:
            self.connection.request("GET", info, headers={"Accept": "application/json"})
            response = self.connection.getresponse()
            body = response.read(MAX_BODY + 1)
            if response.status != 200:
                raise OSError(f"HTTP {response.status}")
            answer = json.loads(body)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self.close()  # the next read reconnects
            return None, f"{where}: {str(exc) or type(exc).__name__}"
        budget = answer.get("max_batch_total_tokens") if isinstance(answer, dict) else None
        if isinstance(budget, bool) or not isinstance(budget, int | float) or not budget > 0:
            return None, f"{where} reports no max_batch_total_tokens (TGI 3.x does not)"
        return float(budget), ""

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


class ServerMetrics:
    """Samples the servers' /metrics in a thread from start() to stop(); figures() sums up the step."""

    def __init__(
        self,
        urls: list[str],
        *,
        tls_verify: bool = True,
        period_s: float = PERIOD_S,
        gpus: GpuUtilization | None = None,
        kv_budgets: dict[str, int] | None = None,
    ) -> None:
        self.servers = [_Server(url, tls_verify, (kv_budgets or {}).get(url)) for url in urls]
        self.gpus = gpus
        self.period_s = period_s
        self.samples: list[tuple[int, dict[str, float | None]]] = []  # (perf_counter_ns, summed gauges)
        self.step_tokens: list[float] = []  # vLLM: mean tokens per engine step between two samples
        self.ticks = 0
        self._previous: list[Reading | None] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> ServerMetrics:
        if self.gpus:
            self.gpus.open()
        self._tick()  # the step's first reading, before its first request
        self._thread = threading.Thread(target=self._run, name="server-metrics", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            # One tick at most: each server's connect and read, each bounded by TIMEOUT_S.
            self._thread.join(2 * TIMEOUT_S * len(self.servers) + 1)
        self._tick()  # the step's last reading, after its last request ended
        for server in self.servers:
            server.close()
        if self.gpus:
            self.gpus.close()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self._tick()

    def _tick(self) -> None:
        if self.gpus:
            self.gpus.read()
        readings = [server.read() for server in self.servers]
        now = time.perf_counter_ns()
        self.ticks += 1
        if self._previous:
            self._step_tokens(readings)
        self._previous = readings
        if any(r is None for r in readings):
            return  # a sum over the servers that answered would understate the deployment's queue
        summed: dict[str, float | None] = {}
        for key in ("queue", "batch", "batch_tokens"):
            values = [r.gauges.get(key) for r in readings if r.gauges.get(key) is not None]
            summed[key] = sum(values) if values else None
        kv = [r.gauges["kv"] for r in readings if r.gauges.get("kv") is not None]
        summed["kv"] = max(kv) if kv else None
        self.samples.append((now, summed))

    def _step_tokens(self, readings: list[Reading | None]) -> None:
        tokens = steps = 0.0
        for before, after in zip(self._previous, readings, strict=True):
            if before is None or after is None or "step_tokens" not in after.histograms:
                continue
            (s0, c0), (s1, c1) = before.histograms.get("step_tokens", (0.0, 0.0)), after.histograms["step_tokens"]
            if c1 > c0 and s1 >= s0:
                tokens, steps = tokens + s1 - s0, steps + c1 - c0
        if steps:
            self.step_tokens.append(tokens / steps)

    def figures(self, window_start_ns: int = 0, window_end_ns: int | None = None) -> dict[str, Any]:
        """The step's server figures (SERVER_FIGURES, None where unknown) and the facts beside them."""
        inside = [g for t, g in self.samples if t >= window_start_ns and (window_end_ns is None or t <= window_end_ns)]
        gauges = inside or [g for _, g in self.samples]  # a window shorter than one period: the whole step
        out: dict[str, Any] = {
            "queue_size": _mean(gauges, "queue"),
            "batch_size": _mean(gauges, "batch"),
            "batch_tokens": _peak(gauges, "batch_tokens"),
            "queue_size_max": _peak(gauges, "queue"),
            "batch_size_max": _peak(gauges, "batch"),
            "kv_cache_usage_max": _peak(gauges, "kv"),
        }
        kv_errors = [f"{s.kv_error}" for s in self.servers if s.kv_error]
        if kv_errors and out["kv_cache_usage_max"] is None:
            out["kv_cache_usage_error"] = "; ".join(kv_errors)[:500]
        if self.gpus:
            out.update(self.gpus.figures(window_start_ns, window_end_ns))
        if out["batch_tokens"] is None and self.step_tokens:
            out["batch_tokens"] = round(max(self.step_tokens), 3)
        for key, column in (("queue", "server_queue_ms_mean"), ("prefill", "server_prefill_ms_mean")):
            out[column] = self._histogram_mean_ms(key)
        out["server_itl_ms_mean"] = self._histogram_mean_ms("itl")
        if self.servers:  # a sampler of GPUs alone has no server samples to count
            out["server_metrics_samples"] = len(gauges)
        dialects = sorted({s.last.dialect for s in self.servers if s.last})
        if dialects:
            out["server_metrics_dialect"] = ",".join(dialects)
        failed = [s for s in self.servers if s.failures]
        if failed:
            out["server_metrics_error"] = "; ".join(
                f"{s.url}: {s.error} ({s.failures} of {self.ticks} reads failed)" for s in failed
            )[:500]
        return out

    def _histogram_mean_ms(self, key: str) -> float | None:
        total = count = 0.0
        for server in self.servers:
            if server.first is None or server.last is None or server.first is server.last:
                continue
            after = server.last.histograms.get(key)
            # A series absent at the start was never touched (TGI writes one on its first observation): zero.
            (s0, c0), (s1, c1) = server.first.histograms.get(key, (0.0, 0.0)), after or (0.0, 0.0)
            if after is None or c1 < c0 or s1 < s0:
                continue  # absent, or the server restarted (its counters went back)
            total, count = total + s1 - s0, count + c1 - c0
        return round(total / count * 1000, 3) if count else None


def sampler_for(spec: Any) -> ServerMetrics | None:
    """The step's sampler for a LoadSpec: its servers' /metrics and its GPUs (None when it names neither)."""
    gpus = GpuUtilization(spec.gpu_indexes, spec.nvml_module) if spec.gpu_indexes else None
    if not spec.metrics_urls and gpus is None:
        return None
    return ServerMetrics(list(spec.metrics_urls), tls_verify=spec.tls_verify, gpus=gpus, kv_budgets=spec.kv_budgets)


def _mean(samples: list[dict], key: str) -> float | None:
    values = [g[key] for g in samples if g.get(key) is not None]
    return round(sum(values) / len(values), 3) if values else None


def _peak(samples: list[dict], key: str) -> float | None:
    values = [g[key] for g in samples if g.get(key) is not None]
    return max(values) if values else None


def timing_check(client_itl_ms: float | None, server_itl_ms: float | None) -> dict[str, Any] | None:
    """The cross-check of the client's ITL mean against the server's per-token mean (None when either is
    missing): their ratio and whether they differ beyond the tolerance. A disagreement is reported, never an
    error of the step: it says one of the two clocks measures something else (see TIMING_TOLERANCE_REL)."""
    if not client_itl_ms or not server_itl_ms:
        return None
    tolerance = max(TIMING_TOLERANCE_REL * server_itl_ms, TIMING_TOLERANCE_ABS_MS)
    return {
        "client_itl_ms_mean": client_itl_ms,
        "server_itl_ms_mean": server_itl_ms,
        "itl_ratio": round(client_itl_ms / server_itl_ms, 4),
        "tolerance_ms": round(tolerance, 3),
        "timing_disagrees": abs(client_itl_ms - server_itl_ms) > tolerance,
    }


def step_server_figures(
    sampler: ServerMetrics, client: dict[str, Any], window: tuple[int, int | None]
) -> dict[str, Any]:
    """The server figures of a finished step, with the timing cross-check against the client's figures."""
    figures = sampler.figures(*window)
    check = timing_check(client.get("itl_ms_mean"), figures["server_itl_ms_mean"])
    if check is not None:
        figures["server_timing"] = check
    return figures
