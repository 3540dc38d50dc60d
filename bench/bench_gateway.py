"""The inference gateway (uvicorn console.gateway_asgi, its own process, production cache time) in front of a model
server, in one run:

- serve.py on the tiny model, 16 callers streaming chat calls back to back, straight to the server and through the
  gateway in alternating legs (the machine's speed changes hit both alike), twice:
  * throughput: serve.py on CPU 1, the gateway and this load generator on CPU 0 (the model server keeps a core of
    its own, as it has its GPUs in production): tokens/s through the gateway over tokens/s direct (median pair);
  * latency: the gateway alone on CPU 0, the load generator beside serve.py on CPU 1 (in production the gateway
    runs on cores of its own, not its callers'; on CPU 0 the generator's own SSE parsing queues behind the
    gateway's and is counted as the gateway's): the time to first token the gateway adds, p99 of a leg through
    the gateway minus p99 of its direct partner, median over pairs. The generator slows serve.py alike in both legs
    of a pair, so it cancels in the difference. The same figure with the generator on CPU 0 is in the detail.
- bench/fake_upstream.py (tokens with no model) at 100 and then 500 concurrent streams through one fresh gateway:
  failed streams, the gateway's peak RSS at 500 over its peak at 100 (VmRSS sampled every 10 ms), and its CPU
  seconds (utime + stime of the gateway and its sealing process) per 1,000 tokens streamed.

The bench client is aiohttp, the same code for both paths; each path keeps its connections between rounds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.common import ROOT, Figure, median, p
from bench.fake_upstream import FakeUpstream
from tests.support.aio import run_async
from tests.support.gateway_process import GatewayProcess
from tests.support.serve_process import ServeProcess, free_port, make_model, ml_python

SERVER_KEY = "bench-server-key"
STREAMS, SERVE_TOKENS, SERVE_PAIRS = 16, 32, 6
LEG_SECONDS = 6.0  # each leg: 16 callers calling back to back, so arrivals spread as in service, not in bursts
FAKE_TOKENS, FAKE_DELAY = 64, 0.05  # 500 streams: 10,000 tokens/s offered, within what 2 cores carry
LOADS = (100, 500)
WARM_CALLS = 8
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Round:
    seconds: float = 0.0
    tokens: int = 0
    ttfts: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds

    @property
    def ttft_p99(self) -> float:
        return p(self.ttfts, 0.99)


@dataclass
class Target:
    url: str
    key: str
    model: str


async def _stream(session: aiohttp.ClientSession, target: Target, prompt: str, tokens: int, round_: Round) -> None:
    body = {
        "model": target.model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {target.key}"}
    started, counted, done = time.perf_counter(), 0, False
    try:
        async with session.post(f"{target.url}/v1/chat/completions", json=body, headers=headers) as response:
            if response.status != 200:
                round_.errors.append(f"{response.status}: {(await response.text())[:200]}")
                return
            async for line in response.content:
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                event = json.loads(data)
                if "error" in event:
                    round_.errors.append(f"error event: {event['error']}")
                    return
                if event.get("choices"):
                    if not counted:
                        round_.ttfts.append(time.perf_counter() - started)
                    counted += 1
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        round_.errors.append(f"{type(exc).__name__}: {exc}")
        return
    round_.tokens += counted
    if not done:
        round_.errors.append(f"the stream ended without [DONE] after {counted} tokens")


async def _round(session: aiohttp.ClientSession, target: Target, prompts: list[str], tokens: int) -> Round:
    round_ = Round()
    started = time.perf_counter()
    await asyncio.gather(*(_stream(session, target, prompt, tokens, round_) for prompt in prompts))
    round_.seconds = time.perf_counter() - started
    return round_


async def _steady(session: aiohttp.ClientSession, target: Target, prompts: list[str], tokens: int) -> Round:
    """STREAMS callers, each starting its next call when the last ends, for LEG_SECONDS. Rounds of 16 calls
    started together measure the burst (the server's first prefill takes whichever calls arrived first), not a
    proxy hop; a steady load does not."""
    round_ = Round()
    started = time.perf_counter()
    deadline = started + LEG_SECONDS

    async def caller(prompt: str) -> None:
        while time.perf_counter() < deadline:
            await _stream(session, target, prompt, tokens, round_)

    await asyncio.gather(*(caller(prompt) for prompt in prompts))
    round_.seconds = time.perf_counter() - started
    return round_


def _session(concurrency: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency + 8),
        timeout=aiohttp.ClientTimeout(total=300, sock_connect=30),
    )


# -- the gateway process, measured from /proc ------------------------------------------------------------------
def _cpu_seconds(pid: int) -> float:
    """utime + stime of the process and its children alive now (the gateway's sealing process)."""
    total = 0.0
    for each in (pid, *_children(pid)):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14 and 15 of stat(5))
    return total


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class PeakRss:
    """The highest VmRSS of a process while the block runs, sampled every 10 ms."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes(self.pid))
            self._stop.wait(0.01)

    def __enter__(self) -> PeakRss:
        self.peak = _rss_bytes(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes(self.pid))


def _records_drained(timeout: float = 60) -> None:
    """Wait until the gateway has sealed every queued inference record (its flushes are part of its cost)."""
    import redis
    from django.conf import settings

    from deployments.gateway.records import STREAM

    client = redis.Redis.from_url(settings.REDIS_URL)
    deadline = time.monotonic() + timeout
    while client.xlen(STREAM) and time.monotonic() < deadline:
        time.sleep(0.1)
    if client.xlen(STREAM):
        raise RuntimeError(f"the gateway left {client.xlen(STREAM)} inference records unsealed after {timeout} s")


def _gateway_env() -> dict:
    from django.conf import settings
    from django.db import connection

    env = dict(os.environ, DATA_DIR=str(settings.DATA_DIR), REDIS_URL=settings.REDIS_URL, PYTHONUNBUFFERED="1")
    # Production's cache and flush times (console/settings.py defaults), whatever this shell says.
    env.pop("GATEWAY_CACHE_SECONDS", None)
    env.pop("GATEWAY_FLUSH_SECONDS", None)
    connection.close()  # SQLite: the gateway's flushes write while this process is idle
    return env


# -- what the gateway routes -----------------------------------------------------------------------------------
def _world(model_dir: Path, serve_url: str, fake_url: str) -> tuple[str, str, str]:
    """Two running deployments (serve.py and the fake) and a key for both with no limits: (raw key, names)."""
    from deployments.gateway import keys
    from deployments.serving.models import Deployment
    from tests.factories import DeploymentFactory, DeploymentSpecFactory, UserFactory
    from tests.support.deploy_fixtures import process_host, ready_artifact

    suffix = f"{int(time.time() * 1000) % 10**8:08d}"  # a database kept between runs gets new names
    admin = UserFactory(username="bench-gateway-admin", roles=["admin"])
    host = process_host(f"bench-gw-{suffix}")
    artifact = ready_artifact(host, model_dir, repo_id=f"bench/tiny-{suffix}")
    names = []
    for kind, url in (("serve", serve_url), ("fake", fake_url)):
        deployment = DeploymentFactory(
            name=f"bench-{kind}-{suffix}",
            state=Deployment.State.RUNNING,
            endpoint=url,
            server_key=SERVER_KEY,
            host=host,
        )
        DeploymentSpecFactory(deployment=deployment, artifact=artifact, current=True)
        names.append(deployment.name)
    _key, raw = keys.key_create(actor=admin, name=f"bench {suffix}", user=admin, all_deployments=True)
    return raw, names[0], names[1]


def _check(round_: Round, what: str, gateway: GatewayProcess | None) -> None:
    """Stop at once when warm-up calls fail: the figures would mean nothing."""
    if round_.errors:
        log = f"\ngateway log (end):\n{gateway.log[-3000:]}" if gateway else ""
        raise RuntimeError(f"{len(round_.errors)} warm-up calls to {what} failed, first: {round_.errors[0]}{log}")


# -- (a) serve.py, direct and through the gateway --------------------------------------------------------------
def _serve_pairs(direct: Target, through: Target, gateway: GatewayProcess) -> list[tuple[Round, Round]]:
    prompts = [f"Request {i}: the gateway forwards question {i} about the bank audit" for i in range(STREAMS)]

    async def run() -> list[tuple[Round, Round]]:
        async with _session(STREAMS) as plain, _session(STREAMS) as gated:
            for _ in range(2):  # warm-up: connections, the gateway's caches and the tokenizer
                _check(await _round(plain, direct, prompts, 4), "serve.py", None)
                _check(await _round(gated, through, prompts, 4), "the gateway", gateway)
            pairs = []
            for index in range(SERVE_PAIRS):
                if index % 2 == 0:
                    d = await _steady(plain, direct, prompts, SERVE_TOKENS)
                    g = await _steady(gated, through, prompts, SERVE_TOKENS)
                else:
                    g = await _steady(gated, through, prompts, SERVE_TOKENS)
                    d = await _steady(plain, direct, prompts, SERVE_TOKENS)
                pairs.append((d, g))
            return pairs

    return run_async(run())


# -- (b) the fake upstream at 100 and 500 streams --------------------------------------------------------------
@dataclass
class Load:
    streams: int
    round: Round
    peak_rss: int
    cpu: float

    @property
    def cpu_per_1000(self) -> float:
        return self.cpu / self.round.tokens * 1000 if self.round.tokens else float("inf")


def _fake_loads(gateway: GatewayProcess, through: Target) -> list[Load]:
    async def one(streams: int) -> Round:
        prompts = [f"Caller {i} asks the fake model something" for i in range(streams)]
        async with _session(streams) as session:
            return await _round(session, through, prompts, FAKE_TOKENS)

    # The first calls load the tokenizer and fill the caches: that memory is not per stream.
    _check(run_async(one(WARM_CALLS)), "the gateway", gateway)
    _records_drained()
    loads = []
    for streams in LOADS:
        cpu_before = _cpu_seconds(gateway.pid)
        with PeakRss(gateway.pid) as rss:
            round_ = run_async(one(streams))
            _records_drained()
        loads.append(Load(streams, round_, rss.peak, _cpu_seconds(gateway.pid) - cpu_before))
    return loads


def _pin_apart(server: ServeProcess) -> bool:
    """serve.py on CPU 1, the gateway and (for throughput) this load generator on CPU 0. In production the model
    computes on GPUs and the gateway runs beside the console; on this CPU-only box they would otherwise take CPU
    from each other, and the ratio would measure that contention instead of what the gateway adds to a call."""
    if (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        return False
    server.command = ["taskset", "-c", "1", *server.command]
    _generator_on(0)
    return True


def _generator_on(cpu: int) -> None:
    """Move every thread of this process (the load generator's loop runs in one of them) to `cpu`."""
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), {cpu})


def run() -> list[Figure]:
    if ml_python() is None:
        raise RuntimeError("bench_gateway needs the ML environment (serve.py): make ml-env")
    model_dir = make_model(Path(os.environ.get("DATA_DIR", ROOT / ".data-test")) / "bench-models" / "tiny")
    server = ServeProcess(
        model_dir, "--max-concurrent-requests", "64", "--max-total-tokens", "512", env={"API_KEY": SERVER_KEY}
    )
    pinned = _pin_apart(server)
    server.start()
    fake = FakeUpstream(free_port(), delay=FAKE_DELAY, tokens=FAKE_TOKENS, api_key=SERVER_KEY).start()
    try:
        raw, serve_name, fake_name = _world(model_dir, server.url, fake.url)
        env = _gateway_env()
        server.wait_ready(300)
        gateway = GatewayProcess(env).start()
        if pinned:
            os.sched_setaffinity(gateway.pid, {0})
        try:
            direct, through = Target(server.url, SERVER_KEY, serve_name), Target(gateway.url, raw, serve_name)
            pairs = _serve_pairs(direct, through, gateway)
            if pinned:
                _generator_on(1)
            latency_pairs = _serve_pairs(direct, through, gateway) if pinned else pairs
            if pinned:
                _generator_on(0)
        finally:
            gateway.stop()
        server.stop()  # its CPU is no longer needed: the fake-upstream runs get both cores
        if pinned:
            os.sched_setaffinity(0, range(os.cpu_count()))
        gateway = GatewayProcess(env).start()
        try:
            loads = _fake_loads(gateway, Target(gateway.url, raw, fake_name))
        finally:
            gateway.stop()
    finally:
        server.stop()
        fake.stop()
    return _figures(pairs, latency_pairs, loads)


def _added_ttft(pairs: list[tuple[Round, Round]]) -> list[float]:
    return [(g.ttft_p99 - d.ttft_p99) * 1000 for d, g in pairs]


def _figures(
    pairs: list[tuple[Round, Round]], latency_pairs: list[tuple[Round, Round]], loads: list[Load]
) -> list[Figure]:
    serve_errors = [e for d, g in pairs + latency_pairs for e in d.errors + g.errors]
    if serve_errors:
        raise RuntimeError(f"{len(serve_errors)} failed streams against serve.py, first: {serve_errors[0]}")
    ratios = [g.rate / d.rate for d, g in pairs]
    added = _added_ttft(latency_pairs)
    beside = _added_ttft(pairs)
    direct_ttfts = [t for d, _ in latency_pairs for t in d.ttfts]
    gateway_ttfts = [t for _, g in latency_pairs for t in g.ttfts]
    placement = (
        "the gateway alone on CPU 0, the load generator beside serve.py on CPU 1"
        if latency_pairs is not pairs
        else "unpinned (fewer than 2 CPUs or no taskset)"
    )
    small, large = loads
    failed = [e for load in loads for e in load.round.errors]
    tokens = sum(load.round.tokens for load in loads)
    cpu = sum(load.cpu for load in loads)
    return [
        Figure(
            "gateway_16_streams_tokens_per_s_over_direct",
            median(ratios),
            "x",
            ">=",
            0.95,
            f"median of {SERVE_PAIRS} alternating pairs of {LEG_SECONDS:.0f} s legs of {STREAMS} callers "
            f"({', '.join(f'{r:.3f}' for r in ratios)}), serve.py tiny, {SERVE_TOKENS} tokens per stream; "
            f"through the gateway {median([g.rate for _, g in pairs]):.0f} "
            f"vs direct {median([d.rate for d, _ in pairs]):.0f} tok/s",
        ),
        Figure(
            "gateway_16_streams_added_ttft_p99",
            median(added),
            "ms",
            "<=",
            10,
            f"{placement}: median over {len(latency_pairs)} pairs of p99(gateway leg) - p99(direct leg) "
            f"({', '.join(f'{a:.1f}' for a in added)}); all rounds pooled: p99 "
            f"{p(gateway_ttfts, 0.99) * 1000:.0f} vs {p(direct_ttfts, 0.99) * 1000:.0f} ms, p50 "
            f"{p(gateway_ttfts, 0.5) * 1000:.0f} vs {p(direct_ttfts, 0.5) * 1000:.0f} ms; with the load generator "
            f"on the gateway's CPU (the throughput legs) {median(beside):.1f} ms",
        ),
        Figure(
            "gateway_fake_upstream_failed_streams",
            len(failed),
            "streams",
            "<=",
            0,
            f"{small.streams} then {large.streams} concurrent streams of {FAKE_TOKENS} tokens "
            f"({FAKE_DELAY * 1000:.0f} ms apart): {small.round.tokens:,} tokens in {small.round.seconds:.1f} s, "
            f"{large.round.tokens:,} in {large.round.seconds:.1f} s"
            + (f"; first failure: {failed[0][:150]}" if failed else ""),
        ),
        Figure(
            "gateway_peak_rss_500_over_100_streams",
            # Memory at 500 streams says nothing when most of them failed at once.
            large.peak_rss / small.peak_rss if not large.round.errors else float("inf"),
            "x",
            "<=",
            1.2,
            f"peak VmRSS {small.peak_rss / 2**20:.0f} MiB at {small.streams} streams, "
            f"{large.peak_rss / 2**20:.0f} MiB at {large.streams} (same process, after {WARM_CALLS} warm-up calls)"
            + (f"; {len(large.round.errors)} of the {large.streams} streams failed" if large.round.errors else ""),
        ),
        Figure(
            "gateway_cpu_per_1000_tokens",
            cpu / tokens * 1000,
            "s",
            "<=",
            1,
            f"utime+stime of the gateway and its sealing process (the inference log): "
            f"{small.cpu_per_1000 * 1000:.0f} ms at {small.streams} streams, "
            f"{large.cpu_per_1000 * 1000:.0f} ms at {large.streams}; goal: one core carries at least 1,000 "
            f"tokens/s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs",
        ),
    ]
