"""A small client of Prometheus' HTTP API: range queries (GET /api/v1/query_range), as the charts need them."""

from __future__ import annotations

import math

import requests

TIMEOUT_S = 5.0


class PrometheusError(Exception):
    """Prometheus could not be asked, or refused the query: the message says which."""


class Prometheus:
    def __init__(self, url: str, *, timeout: float = TIMEOUT_S) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def query_range(self, query: str, *, start: int, end: int, step: int) -> dict[int, float | None]:
        """{Unix second: value} of the query's result, the series added together where it returns several (a
        query that sums returns one); NaN and infinities (a quantile of no requests) read as None."""
        values: dict[int, float | None] = {}
        for _labels, points in self.query_range_series(query, start=start, end=end, step=step):
            for second, number in points.items():
                if number is None:
                    values.setdefault(second, None)
                else:
                    values[second] = (values.get(second) or 0.0) + number
        return values

    def query_range_series(
        self, query: str, *, start: int, end: int, step: int
    ) -> list[tuple[dict[str, str], dict[int, float | None]]]:
        """Each series of the query's result: its labels and {Unix second: value} (None for NaN, infinities)."""
        try:
            response = requests.get(
                f"{self.url}/api/v1/query_range",
                params={"query": query, "start": start, "end": end, "step": step},
                timeout=self.timeout,
            )
        except requests.RequestException as error:
            raise PrometheusError(f"{self.url}: {type(error).__name__}") from error
        try:
            body = response.json()
        except ValueError:
            raise PrometheusError(f"{self.url}: HTTP {response.status_code}, not JSON") from None
        if response.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(f"{self.url}: {body.get('errorType', response.status_code)}: {body.get('error', '')}")
        data = body.get("data") or {}
        if data.get("resultType") != "matrix":
            raise PrometheusError(f"{self.url}: expected a matrix, got {data.get('resultType')!r}")
        found = []
        for series in data.get("result") or []:
            points: dict[int, float | None] = {}
            for at, text in series.get("values") or []:
                number = float(text)
                points[int(float(at))] = number if math.isfinite(number) else None
            found.append((dict(series.get("metric") or {}), points))
        return found
