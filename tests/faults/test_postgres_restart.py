"""F6: the console's PostgreSQL restarted mid-run (a private cluster the test owns, down for timings().outage_s):
web, worker and beat reconnect, the job writing its log goes on, and 0 log lines and 0 audit events are lost.

The console runs migrated on that cluster, with a private Redis beside it. A job writes lines through the
outage; a client posts to the API (each 201 is an audit event) before, during and after; a StreamWatcher follows
the job's stream. Afterwards the database must hold the job's lines 1..N contiguous with N the producer's count,
exactly one audit event per 201 the client got, and a chain `audit_verify` accepts; the watcher holds 1..N."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import psycopg
import pytest
import requests

from tests.faults import harness
from tests.faults.console_stack import ConsoleStack, console_env, manage
from tests.faults.private_services import PrivatePostgres, PrivateRedis
from tests.faults.stream_watch import StreamWatcher
from tests.support.serve_process import ROOT

pytestmark = pytest.mark.fault

LINE_DELAY = 0.02


class _Auditor(threading.Thread):
    """A client creating a team every 0.2 s through the API; remembers each name the server answered 201 for."""

    def __init__(self, url: str, token: str) -> None:
        super().__init__(daemon=True)
        self.url, self.stopped = url, threading.Event()
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.confirmed: list[str] = []
        self.refused = 0
        self.confirmed_at: list[float] = []

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            name = f"f6-{time.time_ns()}"
            try:
                response = self.session.post(f"{self.url}/api/v1/teams/", json={"name": name}, timeout=10)
            except requests.RequestException:
                self.refused += 1
                continue
            if response.status_code == 201:
                self.confirmed.append(name)
                self.confirmed_at.append(time.monotonic())
            else:
                self.refused += 1


@pytest.fixture
def console_on_private_postgres(tmp_path):
    postgres = PrivatePostgres().start()
    redis_server = PrivateRedis().start()
    try:
        database_url = postgres.createdb("console")
        # The lease outlives the outage (as 120 s outlives a restart in production): the job is expected to go
        # on, not to be retried by the reaper.
        env = console_env(
            database_url=database_url, redis_url=redis_server.url(), DEBUG="true", JOB_LEASE_SECONDS="300"
        )
        manage(env, "migrate", "-v", "0")
        seeding = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.console_programs", "seed"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        stack = ConsoleStack(env, tmp_path, with_beat=False).start()  # nothing here needs the reaper
        seed = json.loads(seeding.communicate(timeout=120)[0])
        try:
            yield postgres, stack, seed, database_url
        finally:
            stack.stop()
    finally:
        redis_server.cleanup()
        postgres.cleanup()


def _query(database_url: str, sql: str, *args) -> list[tuple]:
    with psycopg.connect(database_url, connect_timeout=5) as connection:
        return connection.execute(sql, args).fetchall()


def test_postgres_restarted_mid_run(console_on_private_postgres, tmp_path):
    postgres, stack, seed, database_url = console_on_private_postgres
    with harness.fault_report(
        "F6",
        f"PostgreSQL restarted mid-run (down {harness.timings().outage_s:g} s)",
        "web, worker and the log writer reconnect; 0 log lines and 0 audit events lost",
    ) as report:
        for trial in harness.repetitions():
            harness.run_trial(
                report, lambda n=trial: _trial(postgres, stack, seed, database_url, tmp_path / f"jobs-{n}")
            )


def _trial(postgres: PrivatePostgres, stack: ConsoleStack, seed: dict, database_url: str, ids_file) -> harness.Trial:
    outage = harness.timings().outage_s
    lines = int((outage + 4) / LINE_DELAY)  # the job writes past the outage
    job = ["1", "0", str(lines), str(LINE_DELAY), "celery", str(lines)]  # one job, `lines` lines
    subprocess.run(
        [sys.executable, "-m", "tests.faults.console_programs", "jobs", str(ids_file), *job],
        cwd=ROOT,
        env=stack.env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    job_id = int(ids_file.read_text().split()[0])
    watcher = StreamWatcher(stack.web.url, f"/ws/jobs/{job_id}/", seed["cookie"]).start()
    auditor = _Auditor(stack.web.url, seed["token"])
    auditor.start()
    try:
        assert watcher.wait_for(20, 60), f"the job's lines did not arrive: {watcher.errors}"
        time.sleep(harness.random_delay(0, 2))
        postgres.stop("fast")  # every session is ended: the console's connections all break
        time.sleep(outage)
        postgres.start()
        back = time.monotonic()
        confirmed_before = len(auditor.confirmed)
        recovered = harness.wait_until(lambda: len(auditor.confirmed) > confirmed_before, 60)
        recover_s = None if recovered is None else auditor.confirmed_at[confirmed_before] - back

        def finished() -> bool:
            return _query(database_url, "SELECT status FROM deployments_job WHERE id = %s", job_id)[0][0] != "running"

        harness.wait_until(finished, outage + 60, interval=0.5)
        time.sleep(1)  # a few more audit events after the job, through reconnected connections
    finally:
        auditor.stopped.set()
        auditor.join(15)
    try:
        status, log_seq, attempts = _query(
            database_url, "SELECT status, log_seq, attempts FROM deployments_job WHERE id = %s", job_id
        )[0]
        ended = watcher.wait_for_end(30)
    finally:
        watcher.stop()
    stored = _query(database_url, "SELECT seq, text FROM deployments_joblogline WHERE job_id = %s ORDER BY seq", job_id)
    seqs = [seq for seq, _ in stored]
    texts = [text for _, text in stored]
    produced = [f"line {n}" for n in range(1, lines + 1)]
    lines_ok = seqs == list(range(1, log_seq + 1)) and [t for t in texts if t.startswith("line ")] == produced
    events = {
        name
        for (name,) in _query(database_url, "SELECT target_name FROM audit_auditevent WHERE action = 'team.created'")
    }
    confirmed = set(auditor.confirmed)
    teams = {name for (name,) in _query(database_url, "SELECT name FROM auth_group WHERE name LIKE 'f6-%%'")}
    audit_ok = confirmed <= events and events == teams  # every 201 recorded; no team without its event
    # The chain as the auditor's API verifies it (the whole chain: no checkpoint yet), through the web process.
    verify = auditor.session.get(f"{stack.web.url}/api/v1/audit/verification/", timeout=30).json()
    missing = watcher.missing(log_seq)
    dead = stack.dead()
    survived = (
        status == "succeeded"
        and attempts == 1
        and lines_ok
        and audit_ok
        and verify["ok"]
        and ended
        and not missing
        and not dead
        and recover_s is not None
    )
    detail = (
        f"job {status} after {attempts} attempt(s): {len(stored)} lines stored, seq 1..{log_seq} "
        f"{'contiguous' if seqs == list(range(1, log_seq + 1)) else 'NOT contiguous'}, {lines} produced lines "
        f"{'all stored once' if lines_ok else 'NOT all stored'}; client missing {missing[:10] or 'none'}, ended "
        f"{ended}, {watcher.connections} connections; audit: {len(confirmed)} 201s, {len(events)} events, "
        f"{auditor.refused} refused during the outage, verify: {verify['summary']}; "
        f"first 201 after restart in {recover_s if recover_s is None else round(recover_s, 2)} s; dead: "
        f"{dead or 'none'}"
    )
    return harness.Trial(survived=survived, recover_s=recover_s, detail=detail)
