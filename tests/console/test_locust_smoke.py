"""The load run's locustfile against the real console under daphne (bench/locust_run.py): a few users of each
role over the main pages and API for a few seconds, every request answered 200. `make bench` runs 50 users for
60 s (bench/bench_locust.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.conf import settings

from bench.locust_run import ROLES, console_server, credentials, run_locust
from tests.conftest import _test_database_url


@pytest.mark.django_db(transaction=True)
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


def test_the_web_process_keeps_no_database_connection_between_requests():
    # Under daphne a kept connection outlives its request's thread; `make bench`'s 50 users ran out of connections.
    env = {k: v for k, v in os.environ.items() if k != "DB_CONN_MAX_AGE"}
    env["DATABASE_URL"] = "postgres://console@127.0.0.1:1/console"  # PostgreSQL settings; nothing connects
    code = "import console.asgi; from django.conf import settings; print(settings.DATABASES['default']['CONN_MAX_AGE'])"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "0", done.stderr[-2000:]
