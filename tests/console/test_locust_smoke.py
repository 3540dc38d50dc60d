"""The load run's locustfile against the real console under daphne (bench/locust_run.py): a few users of each
role over the main pages and API for a few seconds, every request answered 200. `make bench` runs 50 users for
60 s (bench/bench_locust.py)."""

from __future__ import annotations

import os

import pytest
from django.conf import settings

from bench.locust_run import ROLES, console_server, credentials, run_locust
from tests.conftest import _test_database_url

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_locustfile_runs_against_the_console_without_a_failure(redis_url, tmp_path):
    creds = credentials(tmp_path / "credentials.json")
    env = dict(
        os.environ,
        DATABASE_URL=_test_database_url(),
        REDIS_URL=redis_url,
        DATA_DIR=str(settings.DATA_DIR),
        ALLOWED_HOSTS="127.0.0.1,localhost",
    )
    with console_server(env) as host:
        result = run_locust(host, creds, users=6, spawn_rate=6, seconds=6, work=tmp_path)

    assert result.exit_code == 0, result.output
    assert result.requests > 0 and result.failures == 0, result.output
    assert {endpoint.name.split(" ")[0] for endpoint in result.endpoints} == set(ROLES), result.output
