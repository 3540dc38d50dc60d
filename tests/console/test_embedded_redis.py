"""The private redis-server used without REDIS_URL: its own socket and port, never 6379."""

from __future__ import annotations

import pytest
import redis

from console.devserver import embedded_redis


def test_starts_on_its_own_socket_and_port_and_stops(tmp_path):
    server = embedded_redis.start(tmp_path)
    try:
        assert server.port != 6379
        assert server.url == f"unix://{tmp_path.resolve()}/redis/redis.sock?db=0"
        client = redis.Redis.from_url(server.url)
        client.set("probe", "1")
        assert client.get("probe") == b"1"
        assert redis.Redis(host="127.0.0.1", port=server.port).ping()
        info = client.info()
        assert info["aof_enabled"] == 1 and client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        with pytest.raises(RuntimeError, match="already runs"):
            embedded_redis.start(tmp_path)
    finally:
        server.stop()
    assert server.process.poll() is not None
    assert not embedded_redis.socket_path(tmp_path).exists()


def test_wrapper_runs_a_command_with_redis_url_and_returns_its_status(tmp_path):
    code = embedded_redis.main(
        [
            "--data-dir",
            str(tmp_path),
            "--",
            "sh",
            "-c",
            'case "$REDIS_URL" in unix://*redis.sock*) exit 7;; *) exit 1;; esac',
        ]
    )
    assert code == 7
    assert not embedded_redis.socket_path(tmp_path).exists()
