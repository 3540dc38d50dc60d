"""`TEST_PROCESSES=2 make unit` runs most of the suite in two processes (pytest-xdist; the default is still one,
docs/architecture.md "Tests"). Each process gets a Redis database and a DATA_DIR of its own, so Celery workers,
channel layers and files started by one never serve the other's tests; pytest-django already gives each its own
test database. Tests that must run alone (the fault matrix: timing and private services) carry the `serial` mark
and run after, in a pytest of their own; tests that use dockerd share one xdist group, because containers are
named after deployment ids that both processes' databases reuse.

Loaded with `-p tests.support.parallel` (pyproject addopts). The environment is changed in a wrapper around
pytest_load_initial_conftests, before pytest-django imports the settings, so the settings, every program a test
starts, and the test process all read the same addresses.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

SERIAL_DIRECTORIES = ("tests/faults/",)
DOCKER_GROUP = "dockerd"


def worker_number(environ: Mapping[str, str] = os.environ) -> int | None:
    """0 for gw0, 1 for gw1; None outside xdist (a plain `pytest` run)."""
    worker = environ.get("PYTEST_XDIST_WORKER", "")
    return int(worker[2:]) if worker.startswith("gw") else None


def redis_url_for_worker(url: str, number: int) -> str:
    """The same server, database `number + 1` past the one `url` names (redis://h/0 -> redis://h/1 for gw0)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    if parts.scheme == "unix" or "db" in query:
        query["db"] = str(int(query.get("db", "0")) + number + 1)
        if parts.scheme == "unix":  # urlunsplit would drop the empty host: unix:/path, which redis-py misreads
            return f"unix://{parts.path}?{urlencode(query)}"
        return urlunsplit(parts._replace(query=urlencode(query)))
    database = int(parts.path.strip("/") or "0") + number + 1
    return urlunsplit(parts._replace(path=f"/{database}"))


def isolate_worker(environ: MutableMapping[str, str]) -> None:
    """Points REDIS_URL and DATA_DIR of an xdist worker at its own; once (programs the worker starts inherit them)."""
    number = worker_number(environ)
    if number is None or environ.get("LLMDEPLOY_TEST_WORKER") == str(number):
        return
    from console.devserver import embedded_redis

    data_dir = Path(environ.get("DATA_DIR") or Path(__file__).resolve().parents[2] / ".data")
    # Without REDIS_URL the settings would look for the embedded server under the worker's own DATA_DIR.
    base = environ.get("REDIS_URL") or embedded_redis.url_for(data_dir.resolve())
    environ["REDIS_URL"] = redis_url_for_worker(base, number)
    environ["DATA_DIR"] = str(data_dir / f"gw{number}")
    environ["LLMDEPLOY_TEST_WORKER"] = str(number)


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config, parser, args):
    isolate_worker(os.environ)
    return (yield)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "serial: runs alone after the parallel part (`make unit`, second step)")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by mark
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = item.nodeid.replace(os.sep, "/")
        if path.startswith(SERIAL_DIRECTORIES):
            item.add_marker(pytest.mark.serial)
        if item.get_closest_marker("docker"):
            item.add_marker(pytest.mark.xdist_group(DOCKER_GROUP))


def _database_kind(item: pytest.Item) -> str | None:
    """ "plain" (rolled back after the test: pytest-django runs these first), "transactional" (flushed), or None."""
    marker = item.get_closest_marker("django_db")
    fixtures = getattr(item, "fixturenames", ())
    if marker is None and "db" not in fixtures:
        return None
    transactional = (marker is not None and marker.kwargs.get("transaction")) or any(
        name in fixtures for name in ("transactional_db", "live_server", "django_db_reset_sequences")
    )
    return "transactional" if transactional else "plain"


def _mixed_groups(items: list[pytest.Item]) -> list[str]:
    """Groups holding both plain and transactional database tests. A group runs as one unit where its first test
    sorts, so its transactional tests would run among the plain ones, and their flush empties what the migrations
    stored (the default model source) under the plain tests that follow in the same process."""
    kinds: dict[str, set[str]] = {}
    for item in items:
        kind = _database_kind(item)
        for mark in item.iter_markers("xdist_group") if kind else ():
            kinds.setdefault(str(mark.args[0] if mark.args else mark.kwargs.get("name")), set()).add(kind)
    return sorted(name for name, found in kinds.items() if len(found) > 1)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Stops an xdist run whose groups would not hold: a grouped test whose node id lacks xdist's `@group` suffix
    would be spread over both processes in silence (pytest 9.2 with pytest-xdist 3.8: pytest-xdist#1386), and a
    group mixing plain and transactional database tests would flush data under plain tests."""
    if session.config.getoption("dist", "no") != "loadgroup" or worker_number() is None:
        return
    lost = [item.nodeid for item in session.items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
    if lost:
        raise pytest.UsageError(f"--dist loadgroup did not group {lost[0]} (and {len(lost) - 1} more): pytest<9.2")
    mixed = _mixed_groups(session.items)
    if mixed:
        raise pytest.UsageError(f"xdist group(s) {', '.join(mixed)} mix plain and transactional database tests")
