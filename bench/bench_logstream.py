"""Live log stream, end to end: producers write lines with JobLog (rows, then a publish after commit), a real
websocket client reads them from daphne at /ws/jobs/<id>/. Throughput is compared with raw Redis pub/sub of
the same batches in the same run; loss, duplicates and order are checked on every line; latency is measured
from each batch's commit to its arrival at the client.

The client runs in its own process (as a browser would), so its work does not share the producers' GIL.

Lines lost are counted over every pass, and over extra rounds run beside CPU burners (BENCH_CPU_BURNERS busy
processes, default 2): on a busy machine channels-redis drops group messages for a channel over capacity, and
the stream must still converge (each subscriber's idle check of the committed head fills a lost tail).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from unittest import mock

from bench.common import ROOT, Figure, median, p, stop

THROUGHPUT_ROUNDS = 5
THROUGHPUT_JOBS = 4
THROUGHPUT_LINES = 10_000  # per job and round, written as fast as the producer can
LATENCY_JOBS = 20
LATENCY_RATE = 1_000  # lines/s per job
LATENCY_SECONDS = 5
TICK = 0.01  # paced producers write LATENCY_RATE * TICK lines per tick
IDLE_TIMEOUT = 15.0  # the client gives up on a stream after this long without a message
RAW_CHANNEL = "bench-logstream-raw"
CONTENDED_ROUNDS = 2
BURNERS = int(os.environ.get("BENCH_CPU_BURNERS", "2"))
# Beside the burners the producers' channel layer also gets a tiny capacity, so that group sends are dropped as
# on an overloaded machine (messages a subscriber has not read yet): the stream must converge all the same.
CONTENDED_CAPACITY = int(os.environ.get("BENCH_CONTENDED_CAPACITY", "3"))


def _text(job_index: int, seq: int) -> str:
    return f"[job {job_index}] shard 3/8 line {seq}: 1.21 GB of 4.80 GB at 112.4 MB/s, eta 00:00:32"


# --- the client process --------------------------------------------------------------------------------


def _client_loop(conn: Connection) -> None:
    """Runs in a spawned process: takes one command at a time, answers "ready" once subscribed, then results."""
    while True:
        command = conn.recv()
        if command[0] == "raw":
            conn.send(_collect_raw(conn, *command[1:]))
        elif command[0] == "ws":
            conn.send(asyncio.run(_collect_ws(conn, *command[1:])))
        else:
            return


def _collect_raw(conn: Connection, redis_url: str, expected: int) -> tuple[int, float]:
    """Count lines arriving over plain pub/sub; returns (lines, time of the last arrival)."""
    import redis

    pubsub = redis.Redis.from_url(redis_url).pubsub()
    pubsub.subscribe(RAW_CHANNEL)
    deadline = time.monotonic() + IDLE_TIMEOUT
    while (message := pubsub.get_message(timeout=1)) is None or message["type"] != "subscribe":
        if time.monotonic() > deadline:
            raise RuntimeError("the raw subscriber did not get subscribed")
    conn.send("ready")
    received, last = 0, 0.0
    while received < expected:
        message = pubsub.get_message(timeout=IDLE_TIMEOUT)
        if message is None:
            break
        if message["type"] == "message":
            received += len(json.loads(message["data"]))
            last = time.time()
    pubsub.close()
    return received, last


async def _collect_ws(conn: Connection, base: str, cookie: str, job_ids: list[int], expected: int) -> list:
    """One socket per job, subscribed from the start; per job: seqs in arrival order and (arrival, count)
    per message."""
    import aiohttp

    headers = {"Cookie": cookie, "Origin": base.replace("ws://", "http://")}
    async with aiohttp.ClientSession(headers=headers) as session:
        sockets = [await session.ws_connect(f"{base}/ws/jobs/{job_id}/", max_msg_size=0) for job_id in job_ids]
        for ws in sockets:
            await ws.send_json({"type": "subscribe", "after": 0})
        for ws in sockets:
            while (await ws.receive_json(timeout=IDLE_TIMEOUT))["type"] != "caught_up":
                pass
        conn.send("ready")
        results = await asyncio.gather(*(_drain(ws, expected) for ws in sockets))
        for ws in sockets:
            await ws.close()
    return results


async def _drain(ws, expected: int) -> tuple[list[int], list[tuple[float, int]]]:
    seqs: list[int] = []
    arrivals: list[tuple[float, int]] = []
    highest = 0
    while highest < expected:
        try:
            message = json.loads((await ws.receive(timeout=IDLE_TIMEOUT)).data)
        except (TimeoutError, TypeError):
            break
        if message.get("type") == "items":
            arrivals.append((time.time(), len(message["items"])))
            seqs.extend(item["seq"] for item in message["items"])
            highest = max(highest, seqs[-1])
    return seqs, arrivals


# --- the server and the producers ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _daphne() -> Iterator[str]:
    """The real ASGI app under daphne, in its own process, on the bench's database and Redis (same env)."""
    port = _free_port()
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-v", "0", "-b", "127.0.0.1", "-p", str(port), "console.asgi:application"],
            cwd=ROOT,
            env=dict(os.environ),
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        try:
            _await_port(port, process, log)
            yield f"ws://127.0.0.1:{port}"
        finally:
            stop(process)


def _await_port(port: int, process: subprocess.Popen, log) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"the benchmark's daphne did not start: {log.read()[-2000:]!r}") from None
            time.sleep(0.1)


@contextmanager
def _client() -> Iterator[Connection]:
    parent, child = multiprocessing.get_context("spawn").Pipe()
    process = multiprocessing.get_context("spawn").Process(target=_client_loop, args=(child,), daemon=True)
    process.start()
    child.close()  # so that a dead client reads as EOF here instead of a wait forever
    try:
        yield parent
    finally:
        with suppress(OSError):
            parent.send(("stop",))
        process.join(10)
        if process.is_alive():
            process.kill()


def _in_threads(target: Callable[[int], None], count: int) -> float:
    """Run target(i) in count threads at once; returns the wall time they started."""
    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    started = time.time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return started


def _write_lines(job_id: int, job_index: int, lines: int, rate: float | None) -> None:
    """One job's producer: JobLog with its default batching; paced at `rate` lines/s when given."""
    from django.db import connection

    from deployments.jobs.log import JobLog
    from deployments.models import Job

    try:
        log = JobLog(Job.objects.get(pk=job_id))
        per_tick = max(1, int((rate or 0) * TICK))
        start = time.monotonic()
        for seq in range(1, lines + 1):
            log.write(_text(job_index, seq))
            if rate and seq % per_tick == 0 and (ahead := start + seq / rate - time.monotonic()) > 0:
                time.sleep(ahead)
        log.flush()
    finally:
        connection.close()


def _publish_raw(job_index: int, lines: int, batch: int) -> None:
    """The baseline producer: the same items in the same batches, JSON over a plain PUBLISH."""
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    items = []
    for seq in range(1, lines + 1):
        items.append(
            {
                "seq": seq,
                "time": datetime.now(UTC).isoformat(),
                "stream": "log",
                "text": _text(job_index, seq),
                "data": None,
            }
        )
        if len(items) == batch:
            client.publish(RAW_CHANNEL, json.dumps(items))
            items = []
    if items:
        client.publish(RAW_CHANNEL, json.dumps(items))
    client.close()


def _await_ready(client: Connection) -> None:
    if not client.poll(60) or client.recv() != "ready":
        raise RuntimeError("the benchmark's websocket client did not get ready")


def _jobs(count: int, actor) -> list[int]:
    from deployments.models import Job

    return [Job.objects.create(kind=Job.Kind.DOWNLOAD, status=Job.Status.RUNNING, actor=actor).pk for _ in range(count)]


@contextmanager
def _commit_stamps() -> Iterator[dict[str, list[tuple[int, float]]]]:
    """Record (last seq, wall time) when each JobLog batch commits: an on_commit hook registered just before
    the batch's own publish, so it runs at the commit, ahead of the publish."""
    from django.db import transaction

    import deployments.jobs.log

    stamps: dict[str, list[tuple[int, float]]] = {}
    real = deployments.jobs.log.publish_on_commit

    def stamped(stream: str, items: list[dict]) -> None:
        last = items[-1]["seq"]
        transaction.on_commit(lambda: stamps.setdefault(stream, []).append((last, time.time())))
        real(stream, items)

    with mock.patch.object(deployments.jobs.log, "publish_on_commit", stamped):
        yield stamps


def _stream(client: Connection, base: str, cookie: str, job_ids: list[int], lines: int, rate: float | None):
    """Write `lines` per job through JobLog while the client reads every job's socket; returns
    (start, end of writing, the client's results per job, commit stamps per stream)."""
    client.send(("ws", base, cookie, job_ids, lines))
    _await_ready(client)
    with _commit_stamps() as stamps:
        started = _in_threads(lambda i: _write_lines(job_ids[i], i, lines, rate), len(job_ids))
        written = time.time()
    return started, written, client.recv(), stamps


def _raw_rate(client: Connection, batch: int) -> float:
    total = THROUGHPUT_JOBS * THROUGHPUT_LINES
    from django.conf import settings

    client.send(("raw", settings.REDIS_URL, total))
    _await_ready(client)
    started = _in_threads(lambda i: _publish_raw(i, THROUGHPUT_LINES, batch), THROUGHPUT_JOBS)
    received, last = client.recv()
    if received != total:
        raise RuntimeError(f"raw pub/sub delivered {received} of {total} lines")
    return total / (last - started)


def _faults(job_ids: list[int], results: list, lines: int) -> tuple[int, int, int, int]:
    """(missing at the client, repeated, out of order, missing in the database) over every job's lines."""
    from deployments.models import JobLogLine

    missing = repeated = misordered = unstored = 0
    for job_id, (seqs, _arrivals) in zip(job_ids, results, strict=True):
        unique = set(seqs)
        missing += len(set(range(1, lines + 1)) - unique)
        repeated += len(seqs) - len(unique)
        misordered += sum(1 for a, b in itertools.pairwise(seqs) if b < a)
        unstored += lines - JobLogLine.objects.filter(job_id=job_id, seq__lte=lines).count()
    return missing, repeated, misordered, unstored


def _latencies(job_ids: list[int], results: list, stamps: dict[str, list[tuple[int, float]]]) -> list[float]:
    """Per line: arrival of the message that carried it minus the commit of the batch that stored it."""
    latencies = []
    for job_id, (seqs, arrivals) in zip(job_ids, results, strict=True):
        committed: dict[int, float] = {}
        first = 1
        for last, at in sorted(stamps.get(f"job-{job_id}", [])):
            committed.update(dict.fromkeys(range(first, last + 1), at))
            first = last + 1
        index = 0
        for arrival, count in arrivals:
            latencies.extend(arrival - committed[seq] for seq in seqs[index : index + count] if seq in committed)
            index += count
    return latencies


@contextmanager
def _contention(burners: int, capacity: int) -> Iterator[None]:
    """`burners` processes spinning on a core each, and the producers' channel capacity at `capacity`."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    processes = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True) for _ in range(burners)
    ]
    try:
        with mock.patch.object(layer, "capacity", capacity):
            yield
    finally:
        for process in processes:
            stop(process)


def _rounds(client: Connection, base: str, cookie: str, actor, rounds: int):
    """Rounds of raw pub/sub then the real stream, interleaved so that load from elsewhere on the machine
    hits both alike. Returns (ratios, raw rates, stream rates, the streamed jobs and results)."""
    from deployments.jobs.log import FLUSH_LINES

    ratios, raw_rates, rates, streamed = [], [], [], []
    for _round in range(rounds):
        raw_rates.append(_raw_rate(client, FLUSH_LINES))
        jobs = _jobs(THROUGHPUT_JOBS, actor)
        started, _written, results, _ = _stream(client, base, cookie, jobs, THROUGHPUT_LINES, None)
        last = max((arrivals[-1][0] for _seqs, arrivals in results if arrivals), default=time.time())
        rates.append(THROUGHPUT_JOBS * THROUGHPUT_LINES / (last - started))
        ratios.append(rates[-1] / raw_rates[-1])
        streamed.append((jobs, results))
    return ratios, raw_rates, rates, streamed


def _throughput(client: Connection, base: str, cookie: str, actor) -> tuple[Figure, list[tuple[list[int], list]]]:
    """The figure is the median of the rounds' ratios. Returns the streamed jobs and results too."""
    from deployments.jobs.log import FLUSH_LINES

    ratios, raw_rates, rates, streamed = _rounds(client, base, cookie, actor, THROUGHPUT_ROUNDS)
    return Figure(
        "logstream_throughput_over_raw_pubsub",
        median(ratios),
        "x",
        ">=",
        0.5,
        f"median of {THROUGHPUT_ROUNDS} rounds ({', '.join(f'{r:.2f}' for r in ratios)}): "
        f"{median(rates):,.0f} lines/s persisted and through daphne vs {median(raw_rates):,.0f} lines/s raw "
        f"pub/sub; {THROUGHPUT_JOBS} jobs x {THROUGHPUT_LINES:,} lines a round, batches of {FLUSH_LINES}",
    ), streamed


def _latency(client: Connection, base: str, cookie: str, actor) -> tuple[Figure, list[int], list]:
    jobs = _jobs(LATENCY_JOBS, actor)
    lines = LATENCY_RATE * LATENCY_SECONDS
    started, written, results, stamps = _stream(client, base, cookie, jobs, lines, LATENCY_RATE)
    latencies = _latencies(jobs, results, stamps)
    if not latencies:
        figure = Figure("logstream_p99_commit_to_client_latency", float("inf"), "s", "<=", 1, "no line arrived")
        return figure, jobs, results
    return (
        Figure(
            "logstream_p99_commit_to_client_latency",
            p(latencies, 0.99),
            "s",
            "<=",
            1,
            f"p50 {p(latencies, 0.5) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms over {len(latencies):,} lines; "
            f"{LATENCY_JOBS} jobs x {LATENCY_RATE} lines/s, written in {written - started:.1f} s "
            f"(paced for {LATENCY_SECONDS} s)",
        ),
        jobs,
        results,
    )


def run() -> list[Figure]:
    from django.conf import settings
    from django.test import Client

    from console import stream_metrics
    from tests.factories import UserFactory

    viewer = UserFactory(username="bench-logstream-viewer", roles=["auditor"])
    browser = Client(HTTP_HOST="127.0.0.1")
    browser.force_login(viewer)
    cookie = f"{settings.SESSION_COOKIE_NAME}={browser.cookies[settings.SESSION_COOKIE_NAME].value}"
    counted = stream_metrics.totals()
    with _daphne() as base, _client() as client:
        throughput, streamed = _throughput(client, base, cookie, viewer)
        latency, paced_jobs, paced = _latency(client, base, cookie, viewer)
        with _contention(BURNERS, CONTENDED_CAPACITY):
            busy_ratios, _raw, _rates, busy = _rounds(client, base, cookie, viewer, CONTENDED_ROUNDS)
    counted = {name: value - counted[name] for name, value in stream_metrics.totals().items()}
    faults, busy_faults = [0, 0, 0, 0], [0, 0, 0, 0]
    passes = [(*pair, THROUGHPUT_LINES, False) for pair in streamed] + [
        (paced_jobs, paced, LATENCY_RATE * LATENCY_SECONDS, False)
    ]
    for jobs, results, lines, burning in passes + [(*pair, THROUGHPUT_LINES, True) for pair in busy]:
        found = _faults(jobs, results, lines)
        faults = [a + b for a, b in zip(faults, found, strict=True)]
        if burning:
            busy_faults = [a + b for a, b in zip(busy_faults, found, strict=True)]
    busy_total = CONTENDED_ROUNDS * THROUGHPUT_JOBS * THROUGHPUT_LINES
    total = THROUGHPUT_ROUNDS * THROUGHPUT_JOBS * THROUGHPUT_LINES + LATENCY_JOBS * LATENCY_RATE * LATENCY_SECONDS
    lost = Figure(
        "logstream_lines_lost",
        sum(faults),
        "lines",
        "<=",
        0,
        "{} missing, {} repeated, {} out of order at the client, {} not stored, of {:,} lines written; ".format(
            *faults, total + busy_total
        )
        + f"{sum(busy_faults)} of them among the {busy_total:,} written beside {BURNERS} CPU burners with a "
        f"channel capacity of {CONTENDED_CAPACITY} (throughput ratio there {median(busy_ratios):.2f}); "
        "subscribers filled in "
        f"{counted[stream_metrics.ITEMS_BACKFILLED]:,} lines their live messages lacked, "
        f"{counted[stream_metrics.OVER_CAPACITY]:,} group sends found a channel over capacity",
    )
    return [throughput, lost, latency]
