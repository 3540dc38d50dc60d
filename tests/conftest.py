"""Shared fixtures: one user per role, an API helper that takes the expected status, real services."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from django.conf import settings
from rest_framework.test import APIClient

from tests.factories import CredentialFactory, UserFactory

pytest_plugins = ["tests.support.hub_fixtures"]
ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
# WhiteNoise looks for STATIC_ROOT when the first request handler is built; tests serve through finders.
Path(settings.STATIC_ROOT).mkdir(parents=True, exist_ok=True)


def need(condition: bool, reason: str) -> None:
    """Skip outside CI with a printed reason; in CI a missing service is a failure, never a skip."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI must provide this: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def _flush_lifts_the_audit_guard():
    """Transactional tests empty the database with `flush` between tests; the guard refuses that on the audit
    tables, so the suite uses its own flush (tests/support/management/commands/flush.py). Registered here,
    not shipped: the product has no command that lifts the guard."""
    from django.core import management

    management.get_commands()["flush"] = "tests.support"  # get_commands() is cached: this entry sticks
    yield


@pytest.fixture(scope="session", autouse=True)
def _plain_static_files():
    """Tests read static files through the finders; production serves the collected, hashed files."""
    from django.test import override_settings

    plain = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}
    storages = {**settings.STORAGES, "staticfiles": plain}
    # A fast hasher: the production one costs ~0.3 s per password, for four users per test.
    hashers = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # An agent started in the test process (start_agent) serves no exporter unless its test asks for one.
    with override_settings(
        STORAGES=storages, WHITENOISE_USE_FINDERS=True, PASSWORD_HASHERS=hashers, AGENT_METRICS_PORT=0
    ):
        yield


@pytest.fixture(scope="session", autouse=True)
def _no_persistent_connections(django_db_blocker):
    """Connections opened by async consumers' worker threads must close after use, or PostgreSQL
    refuses to drop the test database at the end."""
    from django.db import connections

    connections.settings["default"]["CONN_MAX_AGE"] = 0
    connections["default"].settings_dict["CONN_MAX_AGE"] = 0


@pytest.fixture(scope="session", autouse=True)
def _end_kept_stream_connections(django_db_setup, django_db_blocker):
    """Consumers' shared thread keeps its connection for a minute (console/stream_db.py); at the end of the session
    those connections are ended so the test database can be dropped (torn down before django_db_setup)."""
    yield
    from django.db import connection

    if connection.vendor != "postgresql" or not connection.settings_dict["NAME"].startswith("test_"):
        return  # no test database was made: no test of the session used one
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture(autouse=True)
def _default_language():
    """Each test starts in the default language: a page requested in Chinese leaves the test thread's language
    active after the response, and messages made later with gettext (a planner's reason) would follow it."""
    from django.utils import translation

    translation.activate(settings.LANGUAGE_CODE)
    yield
    translation.deactivate()


@pytest.fixture(autouse=True)
def _fresh_channel_layer():
    """Each test gets its own channel layer object. channels-redis keeps asyncio locks on it, bound to the event
    loop that first used them; a test whose loop ended mid-receive (a socket closed by the server) leaves one held,
    and the next test's loop then fails with "bound to a different event loop"."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield


@pytest.fixture(autouse=True)
def _no_remembered_audit_walks():
    """What earlier tests' chains verified (the head a page view resumes from, the last full walk and its break) is
    kept in the shared cache under fixed keys: each test starts without it, as a console does on a fresh Redis."""
    from django.core.cache import cache

    from audit.incremental import HEAD_KEY, WALK_KEY
    from audit.verify import LAST_RESULT_KEY

    cache.delete_many([HEAD_KEY, WALK_KEY, LAST_RESULT_KEY])
    yield


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The real Redis the suite runs against (REDIS_URL, or the embedded one `make test` starts)."""
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
    try:
        client.ping()
    except (redis.ConnectionError, OSError) as exc:
        pytest.fail(f"Redis at {settings.REDIS_URL} does not answer ({exc}); run the suite with `make test`")
    return settings.REDIS_URL


def _make_role_user(role: str | None, username: str):
    return UserFactory(username=username, roles=[role] if role else [])


@pytest.fixture
def admin(db):
    return _make_role_user("admin", "alice-admin")


@pytest.fixture
def engineer(db):
    return _make_role_user("engineer", "erin-engineer")


@pytest.fixture
def auditor(db):
    return _make_role_user("auditor", "audrey-auditor")


@pytest.fixture
def nobody(db):
    """A user who can log in but holds no role."""
    return _make_role_user(None, "noah-norole")


@pytest.fixture
def users(admin, engineer, auditor, nobody) -> dict:
    return {"admin": admin, "engineer": engineer, "auditor": auditor, "nobody": nobody, "anonymous": None}


@pytest.fixture
def credential(db, admin):
    return CredentialFactory(created_by=admin)


class Api:
    """An API client bound to one user; every call states the status it expects."""

    def __init__(self, user=None) -> None:
        self.client = APIClient()
        if user is not None:
            self.client.force_login(user)

    def call(self, method: str, url: str, expected: int, data=None, **headers):
        response = getattr(self.client, method.lower())(url, data=data, format="json", **headers)
        assert response.status_code == expected, (
            f"{method} {url}: expected {expected}, got {response.status_code}: {getattr(response, 'data', response)}"
        )
        return response

    def get(self, url: str, expected: int = 200, **kw):
        return self.call("get", url, expected, **kw)

    def post(self, url: str, data=None, expected: int = 201, **kw):
        return self.call("post", url, expected, data=data, **kw)

    def patch(self, url: str, data=None, expected: int = 200, **kw):
        return self.call("patch", url, expected, data=data, **kw)

    def delete(self, url: str, expected: int = 204, **kw):
        return self.call("delete", url, expected, **kw)


@pytest.fixture
def api():
    return Api


def _test_database_url() -> str:
    """A DATABASE_URL naming the test database, for worker processes that must see test data."""
    from django.db import connection

    params = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{params['NAME']}"
    user = params.get("USER") or ""
    password = f":{params['PASSWORD']}" if params.get("PASSWORD") else ""
    host = params.get("HOST") or "127.0.0.1"
    port = f":{params['PORT']}" if params.get("PORT") else ""
    return f"postgres://{user}{password}@{host}{port}/{params['NAME']}"


def _start_worker(env_extra: dict, name: str, queue: str, pool: str = "solo", include: str = ""):
    # AGENT_METRICS_PORT=0: test agents serve no GPU exporter, so several on one machine do not fight over 9835.
    env = {**os.environ, "DATA_DIR": str(settings.DATA_DIR), "PYTHONUNBUFFERED": "1", "AGENT_METRICS_PORT": "0"}
    env.update(env_extra)
    log = open(Path(settings.DATA_DIR) / f"{name}.log", "w")  # noqa: SIM115
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "console",
            "worker",
            "--pool",
            pool,
            "--concurrency",
            "1",
            "-l",
            "INFO",
            "-Q",
            queue,
            "-n",
            f"{name}-{os.getpid()}@%h",
            "--without-gossip",
            "--without-mingle",
            *(["--include", include] if include else []),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    process.node_name = f"{name}-{os.getpid()}@{socket.gethostname()}"
    return process, log


@pytest.fixture(scope="session")
def celery_db_worker(redis_url, django_db_setup, django_db_blocker):
    """A real worker on the test database, consuming a private queue; route tasks to it with
    `celery_db_queue`. Tests using it need committed data (transactional_db)."""
    with django_db_blocker.unblock():
        url = _test_database_url()
    queue = f"test-db-{os.getpid()}"
    process, log = _start_worker({"REDIS_URL": redis_url, "DATABASE_URL": url}, "test-db-worker", queue)
    yield from _wait_and_stop(process, log, queue)


@pytest.fixture
def celery_db_queue(celery_db_worker):
    """Send every task of this test to the database-connected worker."""
    from console.celery import app

    _set_routes(app, {"*": {"queue": celery_db_worker}})
    yield celery_db_worker
    _set_routes(app, None)


def _set_routes(app, routes) -> None:
    """Celery builds its router and route table once, at the first task sent: rebuild them."""
    app.conf.task_routes = routes
    app.amqp.flush_routes()
    app.amqp.__dict__.pop("router", None)


def _wait_and_stop(process, log, queue):
    from console.celery import app

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the Celery worker exited with {process.returncode}; see {log.name}")
        if app.control.ping(destination=[process.node_name], timeout=0.5):
            break
    else:
        process.kill()
        pytest.fail(f"the Celery worker did not answer within 60 s; see {log.name}")
    yield queue
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


@pytest.fixture(scope="session")
def celery_worker_process(redis_url):
    """A real Celery worker process consuming the default queue from the suite's Redis."""
    process, log = _start_worker({"REDIS_URL": redis_url}, "test-worker", "celery")
    for _ in _wait_and_stop(process, log, "celery"):
        yield process
