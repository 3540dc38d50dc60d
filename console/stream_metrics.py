"""Counters of the live streams' losses, summed across processes in Redis and sent as OpenTelemetry metrics.

What is counted (names as `manage.py stream_metrics` prints them, Prometheus text format):
- `llmdeploy_stream_items_backfilled_total`: items a live subscriber read from the database because their live
  message had not arrived: a gap revealed by a later item, or found by the idle check of the committed head.
  Every live message lost on the way (a channel over capacity, an expired message, a failed publish) shows up
  here once per subscriber that missed it; a message merely overtaken by a later one counts too.
- `llmdeploy_stream_publish_over_capacity_total`: subscribers' channels that channels-redis reported full
  when a stream batch was sent to the group (it drops the message for that channel silently and logs the count
  at INFO: counted while LOG_LEVEL lets INFO through, the default).
- `llmdeploy_stream_publish_failed_total`: group sends that raised (Redis away).
- `llmdeploy_stream_slow_sockets_closed_total`: live sockets closed because their client stopped taking what was
  sent (STREAM_SOCKET_STALL_SECONDS); each such client reconnects and catches up from the database.
"""

from __future__ import annotations

import logging
import threading

from django.conf import settings
from opentelemetry import metrics

logger = logging.getLogger(__name__)
ITEMS_BACKFILLED = "items_backfilled"
OVER_CAPACITY = "publish_over_capacity"
PUBLISH_FAILED = "publish_failed"
SLOW_SOCKETS_CLOSED = "slow_sockets_closed"
NAMES = (ITEMS_BACKFILLED, OVER_CAPACITY, PUBLISH_FAILED, SLOW_SOCKETS_CLOSED)
_meter = metrics.get_meter("llmdeploy.console")
_counters = {name: _meter.create_counter(f"llmdeploy.stream.{name}", unit="1") for name in NAMES}
_client = None
_client_lock = threading.Lock()


def _key() -> str:
    return f"{settings.CHANNEL_LAYERS['default'].get('CONFIG', {}).get('prefix', 'console')}:stream-metrics"


def _redis():
    global _client
    with _client_lock:
        if _client is None:
            import redis

            _client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
        return _client


def count(name: str, amount: int = 1) -> None:
    """Add to a counter (blocking: call it from a thread in async code). Never raises."""
    if amount <= 0:
        return
    _counters[name].add(amount)
    try:
        _redis().hincrby(_key(), name, amount)
    except Exception as exc:  # a metric must not break the stream
        logger.debug("stream metric %s not stored: %s", name, exc)


def totals() -> dict[str, int]:
    """Every counter's total across processes since Redis started."""
    stored = _redis().hgetall(_key())
    values = {key.decode(): int(value) for key, value in stored.items()}
    return {name: values.get(name, 0) for name in NAMES}


def prometheus_text() -> str:
    lines = []
    for name, value in totals().items():
        metric = f"llmdeploy_stream_{name}_total"
        lines += [f"# TYPE {metric} counter", f"{metric} {value}"]
    return "\n".join(lines) + "\n"


class OverCapacityCounter(logging.Handler):
    """Counts the channels channels-redis reports over capacity in a stream group ("%s of %s channels over
    capacity in group %s"): the only trace it leaves of a dropped group message."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        if "over capacity in group" in str(record.msg) and len(args) == 3 and str(args[2]).startswith("stream."):
            count(OVER_CAPACITY, int(args[0]))


_installed = False


def watch_over_capacity() -> None:
    """Install the handler on channels-redis's logger once per process."""
    global _installed
    if not _installed:
        logging.getLogger("channels_redis.core").addHandler(OverCapacityCounter())
        _installed = True
