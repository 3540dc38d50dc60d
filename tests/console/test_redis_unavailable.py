"""Without Redis the console answers from the database and says it is degraded (the fast half of fault F5;
tests/faults/test_redis_faults.py freezes a real redis-server under the running processes)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from django.core.cache import cache
from django.db.utils import OperationalError
from kombu.exceptions import OperationalError as BrokerError

import tests.support.job_handlers  # noqa: F401  (the test.count kind)
from console import cache as console_cache
from console import redis_health
from deployments.jobs import services as job_services
from deployments.jobs.log import JobLog
from deployments.models import Job, JobLogLine
from tests.support.serve_process import free_port

pytestmark = pytest.mark.django_db

BANNER = 'data-degraded="redis"'


@pytest.fixture
def redis_gone(settings):
    """REDIS_URL and the cache on a port nothing listens on; the health check asks again at once."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    settings.REDIS_URL = url
    settings.CACHES = {
        "default": {
            "BACKEND": "console.cache.TolerantRedisCache",
            "LOCATION": url,
            "OPTIONS": {"socket_timeout": 1, "socket_connect_timeout": 1},
        }
    }
    redis_health._state.update(at=float("-inf"))
    console_cache._down_until = 0.0
    yield
    redis_health._state.update(at=float("-inf"))
    console_cache._down_until = 0.0  # the real Redis of the tests after this one is up


def test_the_cache_answers_a_miss_and_drops_writes(redis_gone):
    cache.set("verification", {"ok": True})  # no exception: the page that writes it still renders
    assert cache.get("verification", "unknown") == "unknown"
    assert cache.get_many(["a", "b"]) == {}


def test_after_one_call_waited_out_its_timeout_the_next_ones_answer_at_once(redis_gone, monkeypatch):
    """A page makes several cache calls: with Redis frozen each would wait the socket timeout (the audit page timed
    out at 10 s in fault F5); after the first failure the others skip Redis for a few seconds."""
    asked = []

    def frozen(self, *args, **kwargs):
        asked.append(args)
        raise TimeoutError("timed out")

    tolerant_get = console_cache._tolerant(frozen, console_cache._default)
    monkeypatch.setattr(console_cache.TolerantRedisCache, "get", tolerant_get)
    assert [cache.get(key, "miss") for key in ("a", "b", "c")] == ["miss"] * 3
    assert len(asked) == 1
    console_cache._down_until = 0.0  # the skip window over: Redis is asked again
    assert cache.get("d", "miss") == "miss" and len(asked) == 2


def test_healthz_and_pages_say_degraded(redis_gone, client, admin):
    assert client.get("/healthz").json() == {"status": "degraded", "redis": "unavailable"}
    client.force_login(admin)
    page = client.get("/")
    assert page.status_code == 200 and BANNER in page.content.decode()


def test_healthy_pages_show_no_banner(client, admin, redis_url):
    redis_health._state.update(at=float("-inf"))
    assert client.get("/healthz").json() == {"status": "ok"}
    client.force_login(admin)
    assert BANNER not in client.get("/").content.decode()


def test_a_job_whose_dispatch_fails_is_created_and_left_to_the_reaper(monkeypatch, django_capture_on_commit_callbacks):
    def broker_away(*args, **kwargs):
        raise BrokerError("Error 111 connecting to redis")

    monkeypatch.setattr(job_services, "dispatch", broker_away)
    with django_capture_on_commit_callbacks(execute=True):
        job = job_services.job_create(kind="test.count", actor=None)  # the caller (a page, the API) gets its job
    job.refresh_from_db()
    assert job.status == Job.Status.PENDING and job.dispatched_at is None  # the reaper's next run sends it


def test_log_lines_wait_while_the_database_is_away(monkeypatch):
    job = Job.objects.create(kind="test.count", status=Job.Status.RUNNING)
    log = JobLog(job, flush_seconds=0)
    # A runner writes outside a transaction (inside one the error is the caller's); the test's own wraps this one.
    log._owner = SimpleNamespace(in_atomic_block=False)
    real_store, failures = JobLog._store, [1]

    def store(self, lines, **kwargs):
        if failures:
            failures.pop()
            raise OperationalError("server closed the connection unexpectedly")
        real_store(self, lines, **kwargs)

    monkeypatch.setattr(JobLog, "_store", store)
    log.write("one")  # its store fails: the job goes on, the line waits
    log.write("two")
    log.flush()
    assert list(JobLogLine.objects.filter(job=job).order_by("seq").values_list("seq", "text")) == [
        (1, "one"),
        (2, "two"),
    ]
