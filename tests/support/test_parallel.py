"""The per-process addresses `make unit` gives each xdist worker (tests/support/parallel.py)."""

from __future__ import annotations

import pytest

from tests.support.parallel import _mixed_groups, isolate_worker, redis_url_for_worker


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


class _Item:
    """What the check reads of a collected test: its marks and fixtures."""

    def __init__(self, *marks, fixturenames=()) -> None:
        self.marks, self.fixturenames = marks, fixturenames

    def get_closest_marker(self, name):
        return next((mark for mark in self.marks if mark.name == name), None)

    def iter_markers(self, name):
        return (mark for mark in self.marks if mark.name == name)


def test_a_group_that_mixes_plain_and_transactional_database_tests_is_refused():
    group = pytest.mark.xdist_group("g").mark
    plain = _Item(group, pytest.mark.django_db.mark)
    transactional = _Item(group, pytest.mark.django_db(transaction=True).mark)
    live = _Item(group, fixturenames=("db", "live_server"))
    no_database = _Item(group)
    assert _mixed_groups([plain, transactional, no_database]) == ["g"]
    assert _mixed_groups([plain, live]) == ["g"]
    assert _mixed_groups([transactional, live, no_database]) == []
    assert _mixed_groups([plain, _Item(pytest.mark.django_db(transaction=True).mark)]) == []
