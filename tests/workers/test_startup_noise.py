"""Start-up is quiet about what is expected: a live-stream publish before Redis is up is a debug line (a warning
once Redis has answered, or when it never does), and a GPU-less host's NVML note is a warning once per agent start,
not every heartbeat."""

from __future__ import annotations

import logging
import threading

import pytest
from channels.layers import channel_layers

from console import streams
from workers import agent

MISSING_REDIS = "unix:///nonexistent-console-test/redis.sock"  # what `make run` sees before redis-server is up


@pytest.fixture
def layer(settings, redis_url):
    """Switch the channel layer between the real Redis and a socket that does not exist."""

    def use(url: str) -> None:
        settings.CHANNEL_LAYERS = {
            "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [url]}}
        }
        channel_layers.backends.clear()

    yield use
    channel_layers.backends.clear()


def _publish(publisher: streams._Publisher) -> None:
    done = threading.Event()
    publisher.put("stream.noise-test", {"type": "stream.items", "items": []}, done)
    assert done.wait(10)


def _failures(caplog) -> list[int]:
    return [r.levelno for r in caplog.records if "live stream publish" in r.getMessage()]


def test_publishing_before_redis_is_up_logs_at_debug_only(layer, caplog):
    caplog.set_level(logging.DEBUG, logger="console.streams")
    layer(MISSING_REDIS)
    publisher = streams._Publisher()
    _publish(publisher)
    _publish(publisher)
    assert _failures(caplog) == [logging.DEBUG, logging.DEBUG]  # was two warnings naming redis.sock
    publisher.quiet_until = 0.0  # the start-up grace is over and Redis never answered: that is news
    _publish(publisher)
    assert _failures(caplog)[-1] == logging.WARNING


def test_once_redis_has_answered_a_failed_publish_is_a_warning(layer, redis_url, caplog):
    caplog.set_level(logging.DEBUG, logger="console.streams")
    layer(redis_url)
    publisher = streams._Publisher()
    _publish(publisher)
    assert _failures(caplog) == []
    layer(MISSING_REDIS)
    _publish(publisher)
    assert _failures(caplog) == [logging.WARNING]


@pytest.mark.django_db(transaction=True)  # start_agent closes the connection, as in a worker
def test_the_nvml_note_is_a_warning_once_per_agent_start_not_every_heartbeat(settings, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("FAKE_NVML_MISSING", "1")
    settings.AGENT_NVML_MODULE = "tests.support.fake_nvml"
    settings.AGENT_HOST_NAME = "cpu-only"
    settings.AGENT_HEARTBEAT_SECONDS = 3600  # the test plays the heartbeats itself
    settings.MODEL_STORE = tmp_path / "store"
    caplog.set_level(logging.DEBUG, logger="workers.agent")

    def warnings() -> int:
        return sum(r.levelno == logging.WARNING and "NVML is not available" in r.getMessage() for r in caplog.records)

    agent.start_agent()
    try:
        for _beat in range(3):
            agent.report_once("cpu-only")
        assert warnings() == 1  # was one per heartbeat, every 30 s
        assert sum("NVML is not available" in r.getMessage() for r in caplog.records) == 4  # the rest at debug
    finally:
        agent.stop_agent()
    agent.start_agent()  # the next agent start says it again, once
    agent.stop_agent()
    assert warnings() == 2
