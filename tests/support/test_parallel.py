"""The per-process addresses `make unit` gives each xdist worker (tests/support/parallel.py)."""

from __future__ import annotations

from tests.support.parallel import isolate_worker, redis_url_for_worker


def test_each_worker_gets_the_next_redis_databases_on_the_same_server():
    assert redis_url_for_worker("redis://127.0.0.1:6379/0", 0) == "redis://127.0.0.1:6379/1"
    assert redis_url_for_worker("redis://127.0.0.1:6379/0", 1) == "redis://127.0.0.1:6379/2"
    assert redis_url_for_worker("redis://:pw@redis.lab:6380/4", 1) == "redis://:pw@redis.lab:6380/6"
    assert redis_url_for_worker("redis://127.0.0.1:6379", 0) == "redis://127.0.0.1:6379/1"
    # The embedded server's unix socket names its database in the query.
    assert redis_url_for_worker("unix:///d/redis.sock?db=0", 1) == "unix:///d/redis.sock?db=2"


def test_a_worker_gets_its_own_data_dir_and_redis_once():
    environ = {"PYTEST_XDIST_WORKER": "gw1", "REDIS_URL": "redis://127.0.0.1:6379/0", "DATA_DIR": "/srv/data-test"}
    isolate_worker(environ)
    assert environ["REDIS_URL"] == "redis://127.0.0.1:6379/2"
    assert environ["DATA_DIR"] == "/srv/data-test/gw1"
    isolate_worker(environ)  # a second call (a pytest run inside the worker's environment) changes nothing
    assert environ["REDIS_URL"] == "redis://127.0.0.1:6379/2"
    assert environ["DATA_DIR"] == "/srv/data-test/gw1"


def test_without_the_embedded_servers_url_a_worker_still_finds_it():
    environ = {"PYTEST_XDIST_WORKER": "gw0", "DATA_DIR": "/srv/data-test"}
    isolate_worker(environ)
    assert environ["REDIS_URL"].startswith("unix:///srv/data-test/") and environ["REDIS_URL"].endswith("db=1")
    assert environ["DATA_DIR"] == "/srv/data-test/gw0"


def test_outside_xdist_nothing_changes():
    environ = {"REDIS_URL": "redis://127.0.0.1:6379/0", "DATA_DIR": "/srv/data-test"}
    isolate_worker(environ)
    assert environ == {"REDIS_URL": "redis://127.0.0.1:6379/0", "DATA_DIR": "/srv/data-test"}
