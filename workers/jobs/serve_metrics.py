"""serve.py's /metrics: Prometheus text with TGI's metric names (TGI 3.3's router metrics).

Counters carry no `_total` suffix (TGI's exporter adds none); histograms have `_bucket`, `_sum` and
`_count`; a series appears once it was first touched, as in TGI. Imports nothing from Django.
"""

from __future__ import annotations

import threading
from collections import defaultdict

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

    def batch_inference(self, method: str, seconds: float) -> None:
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
