"""Fault matrix F7 and F8 (issue 20): the live stream's sockets against the real console under daphne.

F7: daphne is killed (SIGKILL) at a random moment with 200 sockets open on 10 jobs that are writing lines, and
started again on the same port: every client reconnects with its last seq and ends with 1..N of its job, no gap,
nothing repeated, and the end marker.
F8: one client that takes one message a second off its socket (so TCP backpressure reaches the server) beside 50
that keep up: the same workload is run without and with it, and the others' p99 delivery latency (line written ->
line received) must not grow; the slow one ends with every line (the server closes it once it has left bytes
unread for STREAM_SOCKET_STALL_SECONDS, and it catches up by backfill).
"""

from __future__ import annotations

import statistics
import threading
import time

import pytest
from django.db import connection

from console import stream_metrics
from deployments.jobs.log import JobLog
from deployments.jobs.models import Job
from tests.deploy.prometheus_live import ConsoleProcess
from tests.factories.jobs import JobFactory
from tests.faults import harness
from tests.faults.stream_watch import StreamCrowd, StreamFollower, daphne_env, session_cookie

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.fault]

STALL_SECONDS = 2  # the test server's STREAM_SOCKET_STALL_SECONDS (10 by default), to keep CI short
P99_GOAL = 1.2  # the others' p99 with the slow client / without it
# A pair of runs of a few seconds' traffic on a shared 2-core machine gives ratios from 0.55 to 1.15 with nothing
# changed, so each pair asserts the looser bound (a server held up by the slow socket misses it by far) and the
# figure `make bench` reports is the median over its 20 pairs, against the goal.
P99_BOUND = 2.0
SLOW_CATCH_UP_S = 12  # last line written -> the slow one holds every line; without the bound ~17 s and growing


def _server_env(redis_url: str) -> dict:
    return daphne_env(redis_url, STREAM_SOCKET_STALL_SECONDS=str(STALL_SECONDS))


# F8's lines are a chatty job's long ones: enough bytes that a slow reader's socket buffers fill within a second.
PADDING = "." * 600


def _write(job: Job, lines: int, pause: float, flush: float, padding: str, written: dict[int, int]) -> None:
    """A job's log as a runner writes it, stored and published every `flush` seconds; each line says when it was
    written (for the latency)."""
    try:
        log = JobLog(job, flush_seconds=flush)
        log.start()
        for n in range(1, lines + 1):
            log.write(f"line {n} t={time.time():.6f} {padding}")
            written[job.pk] = n
            time.sleep(pause)
        log.stop()
        log.flush()
        log.end_on_commit()
        Job.objects.filter(pk=job.pk).update(status=Job.Status.SUCCEEDED)
    finally:
        connection.close()


def _writers(
    jobs: list[Job], lines: int, pause: float, flush: float, padding: str = "", written: dict[int, int] | None = None
) -> list[threading.Thread]:
    """One writer thread per job, started; `written` follows how many lines each has written."""
    written = {} if written is None else written
    args = [(job, lines, pause, flush, padding, written) for job in jobs]
    threads = [threading.Thread(target=_write, args=job_args, daemon=True) for job_args in args]
    for thread in threads:
        thread.start()
    return threads


def _holds_exactly(follower: StreamFollower, lines: int) -> str:
    """'' when the follower holds lines 1..N of its job in order and the end at N; else what is wrong."""
    if follower.ended_seq != lines:
        return f"end {follower.ended_seq} (want {lines})"
    if missing := follower.missing(lines):
        return f"missing {len(missing)} (first {missing[:5]})"
    if extra := sorted(seq for seq in follower.items if seq > lines):
        return f"items past the end {extra[:5]}"
    wrong = [seq for seq in range(1, lines + 1) if not follower.items[seq]["text"].startswith(f"line {seq} ")]
    return f"seq and text disagree at {wrong[:5]}" if wrong else ""


@pytest.fixture(scope="module")
def console(tmp_path_factory, redis_url, django_db_setup):
    """One daphne for the module's tests (each test's data is committed, and flushed after it)."""
    env = _server_env(redis_url)
    server = ConsoleProcess(tmp_path_factory.mktemp("console")).start(env)
    server.env = env
    try:
        yield server
    finally:
        server.stop()


# -- F7 ------------------------------------------------------------------------------------------------------------
# 10 jobs writing 20 lines/s each, stored and published 4 times a second: 800 socket messages a second to the 200
# clients, what this 2-core machine sustains beside the rest of the suite.
F7_JOBS, F7_CLIENTS, F7_LINES, F7_PAUSE, F7_FLUSH = 10, 200, 60, 0.05, 0.25


def test_f7_clients_reconnect_after_the_server_is_killed(admin, console):
    cookie = session_cookie(admin)
    with harness.fault_report(
        "F7",
        "the ASGI server killed with 200 sockets open",
        "clients reconnect with their last sequence number, 0 gaps",
    ) as report:
        for _ in harness.repetitions():
            harness.run_trial(report, lambda: _f7_trial(console, cookie))


def _f7_trial(server: ConsoleProcess, cookie: str) -> harness.Trial:
    jobs = [JobFactory(status=Job.Status.RUNNING) for _ in range(F7_JOBS)]
    # The page's backoff (1 s, doubling; the page caps it at 30 s, the test at 8 s): 200 clients retrying every
    # fraction of a second would keep a restarting server busy with handshakes it then drops as too late.
    followers = [
        StreamFollower(
            server.url,
            f"/ws/jobs/{jobs[n % F7_JOBS].pk}/",
            cookie,
            reconnect_delay=1,
            max_reconnect_delay=8,
            start_within=2,  # tabs are not all opened in the same instant; after the kill they reconnect together
        )
        for n in range(F7_CLIENTS)
    ]
    opened = time.monotonic()
    with StreamCrowd(followers) as crowd:
        assert crowd.wait(lambda f: f.caught_up, 60), _not_subscribed(followers, crowd)
        subscribed_s = time.monotonic() - opened
        written: dict[int, int] = {}
        writers = _writers(jobs, F7_LINES, F7_PAUSE, F7_FLUSH, written=written)
        # Somewhere while the lines flow: once the jobs have written between a fifth and four fifths of them.
        kill_at = int(harness.random_delay(0.2, 0.8) * F7_JOBS * F7_LINES)
        assert harness.wait_until(lambda: sum(written.values()) >= kill_at, 60) is not None, "the writers stalled"
        killed = time.monotonic()
        server.process.kill()
        server.process.wait()
        held_at_kill = sum(len(f.items) for f in followers)
        written_at_kill = sum(written.values())
        server.start(server.env)
        restarted = time.monotonic() - killed
        for writer in writers:
            writer.join(60)
        caught_up = crowd.wait(lambda f: f.at_end, 60)
        recover_s = time.monotonic() - killed
    wrong = {n: problem for n, f in enumerate(followers) if (problem := _holds_exactly(f, F7_LINES))}
    not_reconnected = sum(f.connections < 2 for f in followers)
    duplicates = sum(f.duplicates for f in followers)
    detail = (
        f"{F7_CLIENTS} clients on {F7_JOBS} jobs x {F7_LINES} lines, subscribed in {subscribed_s:.1f} s; "
        f"killed with {written_at_kill} lines written, {held_at_kill} of {F7_CLIENTS * F7_LINES} delivered; "
        f"server back in {restarted:.1f} s; "
        f"every client at its end {recover_s:.1f} s after the kill; {len(wrong)} clients wrong; "
        f"{duplicates} items sent twice (dropped); {sum(len(f.errors) for f in followers)} failed connection attempts"
    )
    if wrong:
        detail += f"; e.g. {list(wrong.items())[:3]}"
    mid_stream = written_at_kill < F7_JOBS * F7_LINES
    if not mid_stream:
        detail += "; the kill did not fall mid-stream"
    survived = caught_up and not wrong and not_reconnected == 0 and mid_stream
    return harness.Trial(survived=survived, recover_s=recover_s if caught_up else None, detail=detail)


# -- F8 ------------------------------------------------------------------------------------------------------------
# 5 jobs writing 20 lines/s each, published 5 times a second: 250 socket messages a second to the 50 clients, well
# below what saturates this 2-core machine (a saturated server's p99 measures its queue, not the slow client).
F8_JOBS, F8_NORMAL, F8_LINES, F8_PAUSE, F8_FLUSH = 5, 50, 60, 0.05, 0.2


def _p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[98]


def _latencies(follower: StreamFollower) -> list[float]:
    """Line written -> line received, per line, for a client that followed live from the first line."""
    return [follower.received_at[seq] - float(item["text"].split(" ")[2][2:]) for seq, item in follower.items.items()]


def _f8_run(
    server: ConsoleProcess, cookie: str, *, slow: bool
) -> tuple[list[StreamFollower], StreamFollower | None, float | None]:
    """The workload once: F8_NORMAL clients on F8_JOBS fresh jobs writing F8_LINES lines each, and with `slow`, one
    more client on the first job reading one message a second. Returns when every client holds every line (or
    gave up): the normal ones, the slow one, and how long after the last line was written the slow one had all."""
    jobs = [JobFactory(status=Job.Status.RUNNING) for _ in range(F8_JOBS)]
    normal = [StreamFollower(server.url, f"/ws/jobs/{jobs[n % F8_JOBS].pk}/", cookie) for n in range(F8_NORMAL)]
    slow_one = StreamFollower(server.url, f"/ws/jobs/{jobs[0].pk}/", cookie, read_interval=1.0) if slow else None
    crowd = StreamCrowd(normal + ([slow_one] if slow_one else [])).start()
    slow_caught_up_s = None
    try:
        assert crowd.wait(lambda f: f.caught_up, 60), _not_subscribed(normal, crowd)
        writers = _writers(jobs, F8_LINES, F8_PAUSE, F8_FLUSH, PADDING)
        for writer in writers:
            writer.join(60)
        assert all(_wait_each(normal, lambda f: f.at_end, 30)), "a normal client did not get every line"
        if slow_one is not None:
            slow_caught_up_s = _wait_time(lambda: slow_one.at_end, 60)
    finally:
        crowd.stop()
    return normal, slow_one, slow_caught_up_s


def _not_subscribed(followers: list[StreamFollower], crowd) -> str:
    waiting = [f for f in followers if not f.caught_up]
    return (
        f"{len(waiting)} of {len(followers)} clients not caught up after 60 s; their connections "
        f"{[f.connections for f in waiting[:10]]}, messages {[f.messages for f in waiting[:10]]}, "
        f"statuses {[f.statuses[-3:] for f in waiting[:3]]}; errors: {crowd.errors()[:3]}"
    )


def _wait_each(followers: list[StreamFollower], predicate, timeout: float) -> list[bool]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(predicate(f) for f in followers):
        time.sleep(0.05)
    return [predicate(f) for f in followers]


def _wait_time(predicate, timeout: float) -> float | None:
    return harness.wait_until(predicate, timeout, interval=0.05)


def test_f8_a_slow_client_beside_normal_ones(admin, console):
    cookie = session_cookie(admin)
    ratios: list[float] = []
    with harness.fault_report(
        "F8",
        "one slow websocket client (reads 1 message/s) beside 50 normal ones",
        f"the others' p99 <= {P99_GOAL}x the run without it; the slow one catches up by backfill",
    ) as report:
        for _ in harness.repetitions():
            harness.run_trial(report, lambda: _f8_trial(console, cookie, ratios))
        if ratios:
            report.figure(
                "fault_F8_p99_ratio",
                statistics.median(ratios),
                "x",
                "<=",
                P99_GOAL,
                f"others' p99 with / without the slow client, median of {len(ratios)} pairs, max {max(ratios):.2f}",
            )


def _f8_trial(server: ConsoleProcess, cookie: str, ratios: list[float]) -> harness.Trial:
    """Pairs of runs until the ratio's verdict is a majority: one pair that misses the bound is a load spike of
    the shared machine unless the next two miss it as well. Everything else must hold in every pair."""
    passed = failed = 0
    details, caught_up = [], []
    while passed <= failed and failed < 2:
        ratio, sound, catch_up_s, detail = _f8_pair(server, cookie)
        ratios.append(ratio)
        details.append(detail)
        caught_up.append(catch_up_s)
        if not sound:
            return harness.Trial(survived=False, recover_s=catch_up_s, detail=" | ".join(details))
        passed, failed = passed + (ratio <= P99_BOUND), failed + (ratio > P99_BOUND)
    return harness.Trial(survived=passed > failed, recover_s=max(caught_up), detail=" | ".join(details))


def _f8_pair(server: ConsoleProcess, cookie: str) -> tuple[float, bool, float | None, str]:
    """The workload without and then with the slow client: the others' p99 ratio, whether everything but the ratio
    held, how long after the last line the slow one held every line, and what was seen."""
    closed_before = stream_metrics.totals().get(stream_metrics.SLOW_SOCKETS_CLOSED, 0)
    alone, _, _ = _f8_run(server, cookie, slow=False)
    closed_alone = stream_metrics.totals().get(stream_metrics.SLOW_SOCKETS_CLOSED, 0) - closed_before
    started = time.monotonic()
    beside, slow_one, slow_caught_up_s = _f8_run(server, cookie, slow=True)
    slow_elapsed = time.monotonic() - started
    closed_beside = stream_metrics.totals().get(stream_metrics.SLOW_SOCKETS_CLOSED, 0) - closed_before - closed_alone

    p99_alone = _p99([x for f in alone for x in _latencies(f)])
    p99_beside = _p99([x for f in beside for x in _latencies(f)])
    ratio = p99_beside / p99_alone
    problems = [problem for f in alone + beside if (problem := _holds_exactly(f, F8_LINES))]
    slow_problem = _holds_exactly(slow_one, F8_LINES)
    reconnected = sum(f.connections > 1 for f in alone + beside)
    # The slow one took at most one message a second off its socket: everything else waited in TCP and the server.
    read_faster = slow_one.messages > slow_elapsed / slow_one.read_interval + slow_one.connections
    detail = (
        f"{F8_NORMAL} clients on {F8_JOBS} jobs x {F8_LINES} lines, "
        f"{sum(len(f.items) for f in beside)} samples a run: p99 {p99_alone * 1000:.0f} ms alone, "
        f"{p99_beside * 1000:.0f} ms beside the slow one (x{ratio:.2f}, bound {P99_BOUND}); the slow one: "
        f"{slow_one.messages} messages in {slow_elapsed:.0f} s, closed as slow {closed_beside} times, "
        f"{slow_one.connections} connections, all lines {'' if slow_problem else 'held '}"
        f"{(slow_caught_up_s or -1):.1f} s after the last was written"
        f"{' (' + slow_problem + ')' if slow_problem else ''}"
    )
    if slow_one.errors:
        detail += f"; the slow one's errors: {slow_one.errors[:3]}"
    if problems:
        detail += f"; normal clients wrong: {problems[:3]}"
    if reconnected or closed_alone:
        detail += f"; {reconnected} normal clients reconnected, {closed_alone} closed as slow without it"
    sound = (
        not problems
        and not slow_problem
        and slow_caught_up_s is not None
        and slow_caught_up_s <= SLOW_CATCH_UP_S
        and reconnected == 0
        and closed_alone == 0
        and closed_beside >= 1
        and not read_faster
    )
    return ratio, sound, slow_caught_up_s, detail
