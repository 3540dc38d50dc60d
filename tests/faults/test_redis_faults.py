"""F4 and F5 against a private redis-server the test owns.

F4: Redis restarted under load, the private one `make run` embeds and an external one: no committed job is lost,
the live log resumes and the client backfills, the worker and beat reconnect and take new work.

The external server runs without persistence (a Redis whose container lost its data: every queued dispatch is
gone, so the reaper must send the pending jobs again); the embedded one keeps its append-only file, as
`make run` starts it.

F5: Redis unreachable (frozen with SIGSTOP for the outage: clients' connections hang rather than being refused,
the harder case): pages and the API answer, say they are degraded, write nothing by halves, and recover within
30 s after."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from django.conf import settings
from django.contrib.auth.models import Group
from django.utils import timezone

from audit.models import AuditEvent
from console.accounts.services.tokens import token_create
from console.devserver import embedded_redis
from console.redis_health import CHECK_EVERY_SECONDS
from deployments.jobs.models import Job
from tests.conftest import _test_database_url
from tests.faults import harness
from tests.faults.console_stack import ConsoleStack, console_env
from tests.faults.private_services import PrivateRedis
from tests.faults.stream_watch import StreamWatcher, session_cookie
from tests.support.serve_process import ROOT

pytestmark = [pytest.mark.fault, pytest.mark.django_db(transaction=True)]

TERMINAL = {Job.Status.SUCCEEDED, Job.Status.FAILED, Job.Status.CANCELLED}
LONG_LINES, LINE_DELAY = 300, 0.02  # the watched job writes for at least 6 s, across the restart
JOBS, GAP = 12, 0.4  # then a job every 0.4 s, queued behind it while Redis goes away and comes back


class _Embedded:
    """console.devserver.embedded_redis for its own data directory: its address (a unix socket there) survives
    a restart, as for `make run`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.server = embedded_redis.start(data_dir)

    def url(self) -> str:
        return embedded_redis.url_for(self.data_dir)

    def restart(self) -> None:
        self.server.stop()
        self.server = embedded_redis.start(self.data_dir)

    def cleanup(self) -> None:
        self.server.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


class _External(PrivateRedis):
    def __init__(self) -> None:
        super().__init__(appendonly=False)  # a restart loses every queued message
        self.start()


@pytest.fixture(scope="module")
def external_stack(django_db_setup, tmp_path_factory):
    """F4 and F5 share one external private Redis and one set of console processes on it (starting them is most
    of a trial's cost). DEBUG: the pages render without collectstatic's manifest."""
    server = _External()
    env = console_env(database_url=_test_database_url(), redis_url=server.url(), DEBUG="true")
    stack = ConsoleStack(env, tmp_path_factory.mktemp("stack")).start()
    yield server, stack
    stack.stop()
    server.cleanup()


@pytest.fixture(params=["external", "embedded"])
def restarted(request, tmp_path):
    """The Redis F4 restarts and the console on it: a private external redis-server, and the embedded one
    `make run` starts (console.devserver.embedded_redis, append-only file), with processes of its own."""
    if request.param == "external":
        yield request.getfixturevalue("external_stack")
        return
    server = _Embedded(Path(f"/tmp/fault-emb-{time.time_ns()}"))
    env = console_env(database_url=_test_database_url(), redis_url=server.url())
    stack = ConsoleStack(env, tmp_path).start()
    yield server, stack
    stack.stop()
    server.cleanup()


def _ids(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def _reaper_runs(stack: ConsoleStack) -> int:
    return stack.beat_log.read_text(errors="replace").count("jobs-reap")


def test_redis_restarted_under_load(restarted, admin, tmp_path):
    redis_server, stack = restarted
    cookie = session_cookie(admin)
    key = "F4" if isinstance(redis_server, _External) else "F4-embedded"
    with harness.fault_report(
        key,
        f"Redis restarted under load ({'external, not persistent' if key == 'F4' else 'embedded'})",
        "no committed job lost; live logs resume; clients backfill; worker and beat reconnect",
    ) as report:
        for trial in harness.repetitions():
            harness.run_trial(report, lambda n=trial: _trial(stack, redis_server, cookie, tmp_path / f"jobs-{n}"))


def _trial(stack: ConsoleStack, redis_server, cookie: str, ids_file: Path) -> harness.Trial:
    jobs = [str(ids_file), str(JOBS), str(GAP), "5", str(LINE_DELAY), "celery", str(LONG_LINES)]
    producer = subprocess.Popen(
        [sys.executable, "-m", "tests.faults.console_programs", "jobs", *jobs],
        cwd=ROOT,
        env=stack.env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert harness.wait_until(lambda: _ids(ids_file), 60), "the producer created no job"
    watched = _ids(ids_file)[0]
    watcher = StreamWatcher(stack.web.url, f"/ws/jobs/{watched}/", cookie).start()
    try:
        assert watcher.wait_for(10, 60), f"the watched job's lines did not arrive: {watcher.errors}"
        time.sleep(harness.random_delay(0, 2))
        reaps_before = _reaper_runs(stack)
        restarted_at = timezone.now()
        redis_server.restart()
        # Live logs resume: a line the job writes after the restart reaches the client (the job writes for
        # seconds more), through the restarted channel layer or the client's backfill.
        committed_at_restart = Job.objects.get(pk=watched).log_seq
        resumed = harness.wait_until(lambda: watcher.last_seq > committed_at_restart, 60)
        _, errors = producer.communicate(timeout=60)
        assert producer.returncode == 0, f"the producer failed (a page would have): {errors[-2000:]}"
        ids = _ids(ids_file)
        assert len(ids) == JOBS

        def finished() -> bool:
            return Job.objects.filter(pk__in=ids, status__in=TERMINAL).count() == len(ids)

        all_done = harness.wait_until(finished, 90)
        statuses = dict(Job.objects.filter(pk__in=ids).values_list("pk", "status"))
        # Queued before the restart and sent again after it: what the reaper recovered from a lost queue.
        resent = Job.objects.filter(pk__in=ids, created_at__lt=restarted_at, dispatched_at__gt=restarted_at).count()
        job = Job.objects.get(pk=watched)
        ended = watcher.wait_for_end(30)
        missing = watcher.missing(job.log_seq)
        reaped_after = _reaper_runs(stack) > reaps_before
        dead = stack.dead()
    finally:
        watcher.stop()
        if producer.poll() is None:
            producer.kill()
    failed = [pk for pk, status in statuses.items() if status != Job.Status.SUCCEEDED]
    survived = bool(
        resumed is not None and all_done is not None and not failed and ended and not missing and reaped_after
    )
    detail = (
        f"{len(ids)} jobs committed ({resent} sent again by the reaper), not succeeded: {failed or 'none'}; all "
        f"done {all_done} s after the restart; "
        f"watched job: {job.log_seq} lines, client missing {missing[:10] or 'none'}, ended {ended}, "
        f"{watcher.connections} connections; beat reaped after the restart: {reaped_after}; dead processes: "
        f"{dead or 'none'}"
    )
    return harness.Trial(survived=survived and not dead, recover_s=resumed, detail=detail)


PAGES = ["/", "/jobs/", "/audit/"]  # what a user looks at; each must answer while Redis is away
ANSWER_WITHIN_S = 10
OUTAGE_JOBS = ["1", "0", "3", "0", "celery", "3"]  # one job of 3 lines


def test_redis_unreachable(external_stack, admin, tmp_path):
    redis_server, stack = external_stack
    _, token = token_create(actor=admin, user=admin, name="F5")
    cookie = session_cookie(admin)
    with harness.fault_report(
        "F5",
        f"Redis unreachable {harness.timings().outage_s:g} s (frozen: connections hang, nothing refused)",
        "pages and the API answer, degraded and saying so; nothing half-written; recovers within 30 s",
    ) as report:
        for trial in harness.repetitions():
            harness.run_trial(
                report, lambda n=trial: _unreachable(stack, redis_server, cookie, token, tmp_path / f"jobs-{n}")
            )


def _unreachable(stack: ConsoleStack, redis_server, cookie: str, token: str, ids_file: Path) -> harness.Trial:
    url = stack.web.url
    browser = requests.Session()
    browser.cookies.set(settings.SESSION_COOKIE_NAME, cookie)
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {token}"

    def healthz() -> str:
        return requests.get(f"{url}/healthz", timeout=ANSWER_WITHIN_S).json()["status"]

    assert harness.wait_until(lambda: healthz() == "ok", 30), "the console was not healthy before the fault"
    problems: list[str] = []
    slowest = 0.0
    teams: dict[str, int] = {}

    def call(what: str, send, expect: int, must_contain: str = "") -> None:
        nonlocal slowest
        started = time.monotonic()
        try:
            response = send()
        except requests.RequestException as error:
            problems.append(f"{what}: {type(error).__name__} after {time.monotonic() - started:.1f} s")
            return
        took = time.monotonic() - started
        slowest = max(slowest, took)
        if response.status_code != expect or must_contain not in response.text:
            problems.append(f"{what}: {response.status_code} in {took:.1f} s {response.text[:200]!r}")

    outage = harness.timings().outage_s
    time.sleep(harness.random_delay(0, 2))
    with redis_server.unreachable():
        frozen = time.monotonic()
        # Work started while Redis is away: committed, left pending, sent by the reaper once Redis is back.
        producer = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.console_programs", "jobs", str(ids_file), *OUTAGE_JOBS],
            cwd=ROOT,
            env=stack.env,
            stderr=subprocess.PIPE,
            text=True,
        )
        rounds, started_work_s = 0, None
        while time.monotonic() - frozen < outage:
            # The banner and the health answer follow a cached check (console/redis_health.py): give it one period.
            told = time.monotonic() - frozen > CHECK_EVERY_SECONDS + 1
            for page in PAGES:
                marker = 'data-degraded="redis"' if told and page == "/" else ""
                call(page, lambda p=page: browser.get(f"{url}{p}", timeout=ANSWER_WITHIN_S), 200, marker)
            call("GET /api/v1/jobs/", lambda: api.get(f"{url}/api/v1/jobs/", timeout=ANSWER_WITHIN_S), 200)
            name = f"f5-{time.time_ns()}"
            before = len(problems)
            call(
                "POST /api/v1/teams/",
                lambda n=name: api.post(f"{url}/api/v1/teams/", json={"name": n}, timeout=ANSWER_WITHIN_S),
                201,
            )
            teams[name] = 201 if len(problems) == before else 0
            if told:
                call("/healthz", lambda: requests.get(f"{url}/healthz", timeout=ANSWER_WITHIN_S), 200, "degraded")
            rounds += 1
            if started_work_s is None and producer.poll() is not None:
                started_work_s = time.monotonic() - frozen  # program start (~3 s) + the job's create and dispatch
    _, errors = producer.communicate(timeout=60)
    if producer.returncode:
        problems.append(f"starting work failed (a page would have): {errors[-1000:]}")
    ids = _ids(ids_file)

    def recovered() -> bool:
        done = Job.objects.filter(pk__in=ids, status=Job.Status.SUCCEEDED).count() == len(ids)
        page = browser.get(f"{url}/", timeout=ANSWER_WITHIN_S).text
        return done and healthz() == "ok" and 'data-degraded="redis"' not in page

    recover_s = harness.wait_until(recovered, 60, interval=0.5)
    # Nothing half-written: every team the API confirmed exists with exactly one audit event, and one that was
    # refused left neither; each job started meanwhile ran exactly once.
    for name, status in teams.items():
        exists = Group.objects.filter(name=name).exists()
        events = AuditEvent.objects.filter(action="team.created", target_name=name).count()
        if (exists, events) != ((True, 1) if status == 201 else (False, 0)):
            problems.append(f"team {name} (answered {status}): exists {exists}, {events} audit events")
    attempts = list(Job.objects.filter(pk__in=ids).values_list("attempts", flat=True))
    if len(ids) != 1 or attempts != [1]:
        problems.append(f"jobs started during the outage: ids {ids}, attempts {attempts}")
    survived = not problems and recover_s is not None and recover_s <= 30
    work = "outlasted the outage" if started_work_s is None else f"ended after {started_work_s:.1f} s"
    detail = (
        f"{rounds} rounds of {len(PAGES)} pages + 2 API calls + /healthz during {outage:g} s, slowest answer "
        f"{slowest:.1f} s; {len(teams)} teams created; a job started during the outage (its program {work}); "
        f"recovered in {recover_s if recover_s is None else round(recover_s, 1)} s; problems: {problems[:5] or 'none'}"
    )
    return harness.Trial(survived=survived, recover_s=recover_s, detail=detail)
