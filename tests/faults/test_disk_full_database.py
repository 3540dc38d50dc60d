"""Disk full on the database's volume: a private PostgreSQL keeps its data directory on a small loop-mounted ext4
(its WAL elsewhere), loaded with a copy of the test database; the console under daphne and a job's log writer
run on it. The disk is filled until writes fail: the API answers 503 with a sentence, the log writer keeps its
lines; nothing is half-written (the audit chain verifies, one event per token); once space is freed the API
writes again and every log line is stored, 1..N. A browser-like client (StreamWatcher) follows the job's live log
through the whole fault, from the console under daphne: it holds 1..N at the end, none twice, each as written."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psycopg
import pytest
import requests
from django.conf import settings
from psycopg import sql

from audit.models import AuditEvent
from console.accounts.models import ApiToken
from console.accounts.services.tokens import token_create
from deployments.jobs.models import Job
from tests.conftest import ROOT, _test_database_url
from tests.deploy.prometheus_live import ConsoleProcess
from tests.factories.jobs import JobFactory
from tests.faults import harness
from tests.faults.harness import Trial, fault_report, run_trial, wait_until
from tests.faults.loopfs import VolumePostgres, loop_filesystem, reachable_dir
from tests.faults.stream_watch import StreamWatcher, session_cookie

pytestmark = [pytest.mark.fault, pytest.mark.django_db(transaction=True)]  # pg_dump must see the rows

MUST_HOLD = (
    "writes fail as a 503 with a sentence, not a 500; the job's log lines wait in memory; nothing half-written "
    "(the audit chain verifies); after space is freed writes resume, 0 log lines are lost, and the job's live "
    "stream reaches a client following it through the fault whole (0 lines lost, none twice)"
)

# A job's log writer as the runner has it (the flusher thread on, 5 ms between lines), on DATABASE_URL; its
# latest seq goes to a file, it stops when the stop file appears and then flushes until the database takes it.
WRITER = r"""
import os, sys, time
from pathlib import Path
import django
django.setup()
from django.db import DatabaseError
from deployments.jobs.log import JobLog
from deployments.jobs.models import Job
status, stop = Path(sys.argv[2]), Path(sys.argv[3])
log = JobLog(Job.objects.get(pk=int(sys.argv[1])), flush_seconds=0.2)
log.start()
while not stop.exists():
    log.write(f"line {log.seq + 1} " + "x" * 200)
    status.with_suffix(".tmp").write_text(str(log.seq))
    os.replace(status.with_suffix(".tmp"), status)  # whole numbers only, for the test reading it
    time.sleep(0.005)
log.stop()
for _ in range(100):
    try:
        log.flush()
        break
    except DatabaseError as exc:
        print("final flush waits:", exc, flush=True)
        time.sleep(0.2)
print("SEQ", log.seq, "PENDING", len(log.pending), flush=True)
"""


def stored_lines(url: str, job_id: int) -> tuple[int, int]:
    with psycopg.connect(url, connect_timeout=2) as connection:
        row = connection.execute(
            "SELECT count(*), coalesce(max(seq), 0) FROM deployments_joblogline WHERE job_id = %s", [job_id]
        ).fetchone()
    return row[0], row[1]


def test_a_full_database_volume_answers_503_keeps_log_lines_and_resumes(admin, redis_url, tmp_path):
    job = JobFactory(status=Job.Status.RUNNING)
    _token, raw = token_create(actor=admin, user=admin, name="disk-full")
    auth = {"Authorization": f"Bearer {raw}"}
    cookie = session_cookie(admin)  # before the copy: the console's database must hold the session

    with (
        fault_report("disk-full-database", "The database's volume fills up", MUST_HOLD) as report,
        reachable_dir() as base,  # pytest's tmp_path is root's alone: PostgreSQL's user could not enter it
        loop_filesystem(base, size_mib=128, owner="postgres") as volume,
        VolumePostgres(volume, base) as postgres,
    ):
        url = postgres.load(_test_database_url(), "console")
        env = dict(
            os.environ,
            DATABASE_URL=url,
            REDIS_URL=redis_url,
            DATA_DIR=str(settings.DATA_DIR),
            ALLOWED_HOSTS="127.0.0.1,localhost",
            PYTHONUNBUFFERED="1",
        )
        console = ConsoleProcess(tmp_path).start(env)
        try:
            for trial in harness.repetitions():

                def body(trial=trial) -> Trial:
                    return _trial(trial, console.url, url, auth, cookie, job.pk, volume, env, tmp_path)

                run_trial(report, body)
        finally:
            console.stop()


def _post_token(base: str, auth: dict, name: str) -> requests.Response:
    return requests.post(f"{base}/api/v1/tokens/", json={"name": name}, headers=auth, timeout=30)


def _trial(trial, base, url, auth, cookie, job_id, volume, env, tmp_path) -> Trial:
    # The job's live log, followed through the fault as the job page follows it (an earlier trial's lines first).
    watcher = StreamWatcher(base, f"/ws/jobs/{job_id}/", cookie).start()
    try:
        return _fill_and_free(trial, base, url, auth, job_id, volume, env, tmp_path, watcher)
    finally:
        watcher.stop()


def _fill_and_free(trial, base, url, auth, job_id, volume, env, tmp_path, watcher: StreamWatcher) -> Trial:
    status, stop = tmp_path / f"writer-{trial}.seq", tmp_path / f"writer-{trial}.stop"
    earlier = stored_lines(url, job_id)[1]  # an earlier trial's lines
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(job_id), str(status), str(stop)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        started = wait_until(lambda: writer.poll() is not None or stored_lines(url, job_id)[1] > earlier, 30)
        assert writer.poll() is None, writer.communicate()[0][-3000:]
        assert started is not None, "the writer stored nothing within 30 s"
        assert watcher.wait_for(earlier + 1, 30), f"the client got none of the job's lines: {watcher.errors}"
        before = _post_token(base, auth, f"before-{trial}")
        assert before.status_code == 201, before.text[-6000:]
        time.sleep(harness.random_delay(0, 1))

        volume.fill()
        answers = []

        def refused() -> bool:  # each accepted token is whole; the first refusal ends the loop
            answers.append(_post_token(base, auth, f"during-{trial}-{len(answers)}"))
            return answers[-1].status_code != 201

        assert wait_until(refused, 60, interval=0) is not None, "writes never failed on the full volume"
        answer = answers[-1]
        assert answer.status_code == 503, (answer.status_code, answer.text[:2000])
        assert answer.json() == {
            "detail": "The database's disk is full, so this change was not saved. An admin must free space on the "
            "database's volume; then try again.",
            "code": "database_full",
        }
        assert answer.headers["Retry-After"] == "30"
        # The job's lines stop arriving while it goes on writing them.
        held = stored_lines(url, job_id)[1]
        client_held = watcher.last_seq
        written = int(status.read_text())
        time.sleep(harness.random_delay(1, 2))
        assert writer.poll() is None, writer.communicate()[0][-3000:]
        assert int(status.read_text()) > written and stored_lines(url, job_id)[1] <= held + 1000

        volume.free()
        freed = time.monotonic()
        accepted = wait_until(lambda: _post_token(base, auth, f"after-{trial}").status_code == 201, 30)
        assert accepted is not None, "the API did not take writes again within 30 s of freeing space"
        caught_up = wait_until(lambda: stored_lines(url, job_id)[1] >= int(status.read_text()) - 50, 30)
        assert caught_up is not None, "the log writer did not catch up within 30 s of freeing space"
        recover_s = time.monotonic() - freed
    finally:
        volume.free()  # a failed trial leaves the next one room
        stop.touch()
        out = writer.communicate(timeout=60)[0]
    assert writer.returncode == 0, out[-3000:]
    final = int(out.split("SEQ ")[1].split()[0])
    assert "PENDING 0" in out, out[-3000:]
    count, last = stored_lines(url, job_id)
    assert count == last == final, f"stored {count} lines, last seq {last}, written {final}"  # 1..N, none lost

    verification = requests.get(f"{base}/api/v1/audit/verification/", headers=auth, timeout=60).json()
    assert verification["ok"] and verification["checked"] == verification["total"], verification
    with psycopg.connect(url) as connection:
        count = sql.SQL("SELECT count(*) FROM {} WHERE {}")
        tokens = connection.execute(count.format(sql.Identifier(ApiToken._meta.db_table), sql.SQL("true")))
        events = connection.execute(
            count.format(sql.Identifier(AuditEvent._meta.db_table), sql.SQL("action = 'token.created'"))
        )
        assert events.fetchone()[0] == tokens.fetchone()[0]  # every token with its one event, none without
    # The client holds every line 1..N, as written, none twice and none beyond: 0 lines lost at the client.
    watcher.wait_for(final, 30)
    missing = watcher.missing(final)
    differ = [seq for seq, item in watcher.items.items() if seq > final or not item["text"].startswith(f"line {seq} ")]
    assert missing == [] and watcher.duplicates == 0 and differ == [], (
        f"the client missed {missing[:10]} ({len(missing)}), got {watcher.duplicates} twice, {differ[:10]} not as "
        f"written, of 1..{final}; {watcher.connections} connections; {watcher.errors[:3]}"
    )
    refusals = sum(a.status_code == 503 for a in answers)
    detail = f"{len(answers) - refusals} tokens before the refusal; {final} lines, 0 lost; the client held lines "
    detail += f"1..{final}, 0 missing, 0 twice, over {watcher.connections} connection(s) ({client_held} when "
    detail += "writes were refused)"
    return Trial(True, recover_s, detail)
