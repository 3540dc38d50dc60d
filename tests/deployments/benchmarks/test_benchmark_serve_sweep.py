"""Issue 17, Show 1: the `benchmark` job against serve.py on CPU (the tiny and the small random Llama), through the
real path: services.benchmark_start, the job on the worker (workers.runner), the load generator as a process, the
gateway (uvicorn, its own process) with the run's inference key, serve.py behind it. The sweep's output tokens/s
rises from concurrency 1 to 4 (continuous batching) and its TTFT p50 rises under load; an independent client
written here (asyncio streams, HTTP/1.1 and SSE parsed here, one kept connection per caller, its own clock:
time.perf_counter as a chunk is read; its own figures) runs the same workload at the same levels
against the same gateway, and the job's output tokens/s and TTFT p50 at one caller agree with it within 5 %
(INDEPENDENT_LEVELS says why not at four). Then one more job
runs through a timing tap (tests/support/sse_tap.py, a relay in its own process that stamps each request and each
event with text as it passes), and the job's figures agree with the tap's figures of the very same requests
within 5 % (TTFT plus the relay's hop, TAP_HOP_MS): a check that the machine's drift between two runs cannot blur.

Two runs of one workload on a 2-core machine differ by more than 5 % unless:
- every answer is exactly `output_tokens` long: the served copy of the model has an end-of-sequence id it never
  generates (serve.py, like TGI, has no `ignore_eos`); with the model's own EOS the random weights end answers
  after 7 to 32 tokens, and which prompts fell in a window moved tokens/s by ~10 % between runs;
- both send the same prompts in the same order (the generator's seeded corpus and random stream, exact token
  lengths with the model's tokenizer) in the same closed loop, with the first requests of each level as warm-up
  and an unmeasured pass at each level before anything is measured (a fresh server is slower for a while);
- the gateway keeps what it looked up (its production cache, here long enough for the whole test): the suite's
  shared gateway looks the key up on every call, ~40 ms with the database busy, more than serve.py's own TTFT;
- the machine's speed drift is bracketed: the independent client runs right before and right after the job, and
  the job's figure must be within 5 % of one of those runs or between them. Other processes on the machine (a
  parallel test run) moved the independent client's own figures by 10 to 80 % between its two runs; a quiet
  machine keeps them within a few per cent, and the test prints both runs;
- a round whose figures fall outside the bracket is measured again (up to three rounds): a generator that is wrong
  disagrees in every round, a machine that slowed while one round's job ran does not slow the next alike.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import settings as django_settings

from deployments.benchmarks import services
from deployments.gateway.keys import key_create
from deployments.models import BenchmarkRun, Deployment, JobLogLine
from tests.conftest import _test_database_url, need
from tests.deployments.gateway.conftest import SERVER_KEY, _gateway_drained  # noqa: F401 (an autouse fixture)
from tests.factories import DeploymentFactory, DeploymentSpecFactory
from tests.support.aio import run_async
from tests.support.deploy_fixtures import process_host, ready_artifact
from tests.support.gateway_process import GatewayProcess
from tests.support.serve_process import ServeProcess, make_model, ml_python
from tests.support.sse_tap import Tapped, TapProcess
from workers import runner
from workers.jobs.bench_figures import percentile
from workers.jobs.loadgen_workload import LengthDistribution, PromptBuilder, load_tokenizer

pytestmark = pytest.mark.django_db(transaction=True)

LEVELS = (1, 4)
FIGURES = ("output_tokens_per_s", "ttft_ms_p50")
# The 5 %, against the independent runs right before and after the job (the bracket absorbs the CPU-bound
# server's drift between runs: on a quiet machine a few per cent; with other work on the 2 cores, up to 20 %, and a
# round is measured again, up to ROUNDS times).
AGREEMENT = 0.05
# ...or, for TTFT, within how late the independent client stamps: it reads each chunk with asyncio's StreamReader and
# stamps when its coroutine runs, the job's generator has the kernel's receive time (loadgen_http.py). At the tiny
# model's 3 ms TTFT the client's p50 came out 0.2 to 0.45 ms above the job's in rounds whose tokens/s agreed.
CLIENT_STAMP_MS = 0.5
# Against the independent client, the single caller. With several closed-loop callers the small model's server runs
# in one of two regimes from run to run: callers in step (all prompts prefilled together, TTFT p50 ~270 ms at 4
# callers) or out of step (a prompt waits for the batch's decode step, ~380 ms, and fewer tokens/s); the client's
# own runs before and after one job landed in different regimes (274 and 376 ms), and a job in the other regime
# than both of them is no timing error. The timing of those steps is checked on the job's own requests (the tap).
INDEPENDENT_LEVELS = (1,)
TAP_AGREEMENT = 0.05
# The tap is a relay: a token reaches it before the job's generator, and a request reaches the generator's stamp
# before the tap's, by two loopback hops through a Python process (measured: the job's TTFT p50 0.13 to 0.26 ms
# above the tap's, at every level and model, while tokens/s agreed within 0.1 %).
TAP_HOP_MS = 0.3
ROUNDS = 3  # job + its bracketing independent runs, until one round agrees (see _judged)


@dataclass(frozen=True)
class Case:
    size: str
    prompt_tokens: int
    output_tokens: int
    warmup_requests: int  # per level, before its window
    duration_s: float
    agreement: float = AGREEMENT


CASES = [
    Case("tiny", prompt_tokens=32, output_tokens=64, warmup_requests=8, duration_s=3),
    # 10 s: at ~0.7 s a request, a 5 s window holds 7 or 8 of them at 1 caller, and that count alone moves tokens/s by
    # 1/7; 10 s halves it.
    Case("small", prompt_tokens=32, output_tokens=16, warmup_requests=4, duration_s=10),
]
# The small model's sweep takes two minutes of the suite's fifty: `make bench` runs it (bench/bench_heavy.py).
PARAMS = [pytest.param(case, id=case.size, marks=[pytest.mark.heavy] if case.size == "small" else []) for case in CASES]


def _never_ending_copy(model_dir: Path, out: Path) -> Path:
    """The model with an end-of-sequence id no token has: every answer runs to max_tokens."""
    out.mkdir(exist_ok=True)
    for item in model_dir.iterdir():
        if item.name != "generation_config.json" and not (out / item.name).exists():
            (out / item.name).symlink_to(item)
    config = json.loads((model_dir / "generation_config.json").read_text())
    config["eos_token_id"] = -1
    (out / "generation_config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def gateway(redis_url, django_db_setup, django_db_blocker):
    """The gateway as production runs it, with a cache time that outlasts the test (the module docstring says why)."""
    with django_db_blocker.unblock():
        database = _test_database_url()
    env = dict(os.environ, DATABASE_URL=database, REDIS_URL=redis_url, DATA_DIR=str(django_settings.DATA_DIR))
    process = GatewayProcess({**env, "GATEWAY_CACHE_SECONDS": "600", "PYTHONUNBUFFERED": "1"}).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def tap(gateway, tmp_path_factory):
    """The timing tap in front of the gateway: the job and the independent client both call through it."""
    process = TapProcess(gateway.url, tmp_path_factory.mktemp("tap") / "taps.jsonl").start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    need(ml_python() is not None, "the ML environment (make ml-env) is needed to run serve.py")
    root = tmp_path_factory.mktemp("sweep-models")
    return _Models(root)


class _Models(dict):
    """Each size made on first use: a run without the heavy cases never builds the small model."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def __missing__(self, size: str) -> Path:
        self[size] = _never_ending_copy(make_model(self.root / size, size), self.root / f"{size}-fixed")
        return self[size]


# -- the independent client --------------------------------------------------------------------------------------


@dataclass
class Stream:
    start: float
    warmup: bool
    arrivals: list[float] = field(default_factory=list)  # one per chunk with text
    end: float = 0.0
    tokens: int = 0  # the server's count (usage)


async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes, stream: Stream) -> None:
    """One streamed chat call on a kept connection (HTTP/1.1, chunked answer); a line is stamped as it is read."""
    stream.start = time.perf_counter()  # just before the request goes out, as the job's generator stamps it
    writer.write(request)
    status = await reader.readline()
    assert b" 200 " in status, status
    while (await reader.readline()).strip():  # the headers: serve.py and the gateway answer chunked
        pass
    pending = b""
    while size := int((await reader.readline()).strip(), 16):
        data = await reader.readexactly(size + 2)
        now = time.perf_counter()
        *lines, pending = (pending + data[:-2]).split(b"\n")
        for line in lines:
            payload = line[5:].strip()
            if not line.startswith(b"data:") or payload == b"[DONE]":
                continue
            event = json.loads(payload)
            if any((choice.get("delta") or {}).get("content") for choice in event.get("choices") or ()):
                stream.arrivals.append(now)
            if event.get("usage"):
                stream.tokens = event["usage"]["completion_tokens"]
    await reader.readline()  # the blank line after the last chunk
    stream.end = time.perf_counter()


def independent_level(gateway_url: str, key: str, model: str, case: Case, concurrency: int, prompts: list[str]) -> dict:
    """`concurrency` callers back to back on one event loop (asyncio streams, HTTP/1.1 written out here), as the
    job's generator runs its callers: when a batch ends, every caller sends its next request at once, which is
    what keeps closed-loop callers in step at the server (callers in threads fell out of step and met the server
    at other moments of its batch: another TTFT at 4 callers). The first `warmup_requests` requests are warm-up;
    the window opens as the first request after them is sent and lasts duration_s; output tokens/s counts the
    tokens that arrived in it, TTFT is over the window's requests."""
    streams: list[Stream] = []
    window: list[float] = []
    address = urlsplit(gateway_url)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {address.netloc}\r\nAuthorization: Bearer {key}\r\n"
        "Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )

    async def caller() -> None:
        reader, writer = await asyncio.open_connection(address.hostname, address.port)
        try:
            while True:
                now = time.perf_counter()
                warmup = len(streams) < case.warmup_requests
                if not warmup:
                    window[:] = window or [now, now + case.duration_s]
                    if now >= window[1]:
                        return
                stream = Stream(start=now, warmup=warmup)
                body = {
                    "model": model,
                    "messages": [{"role": "user", "content": prompts[len(streams) % len(prompts)]}],
                    "max_tokens": case.output_tokens,
                    "temperature": 0.0,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }
                streams.append(stream)
                payload = json.dumps(body).encode()
                await _one(reader, writer, head.format(length=len(payload)).encode() + payload, stream)
        finally:
            writer.close()

    async def run() -> None:
        await asyncio.wait_for(asyncio.gather(*(caller() for _ in range(concurrency))), 300)

    run_async(run())
    start, end = window
    tokens = sum(
        len([t for t in s.arrivals if start <= t < end]) * s.tokens / len(s.arrivals) for s in streams if s.arrivals
    )
    assert all(s.tokens == case.output_tokens for s in streams)
    ttfts = [(s.arrivals[0] - s.start) * 1000 for s in streams if not s.warmup]
    e2es = [(s.end - s.start) * 1000 for s in streams if not s.warmup]
    return {
        "output_tokens_per_s": round(tokens / case.duration_s, 1),
        "ttft_ms_p50": round(percentile(ttfts, 50), 3),
        "e2e_ms_p50": round(percentile(e2es, 50), 3),  # printed beside the job's, not compared
        "requests": len(ttfts),
    }


def tapped_figures(taps: list[Tapped], case: Case) -> dict[int, dict]:
    """The job's steps as the tap timed them, by the same rules as the independent client: its request ids say the
    step and the request's place in it (`{run}-{step}-{n}`, the first warmup_requests are warm-up); the window opens
    as the first measured request reached the tap and lasts duration_s."""
    steps: dict[int, list[tuple[int, Tapped]]] = defaultdict(list)
    for tapped in taps:
        _, step, n = tapped.request_id.rsplit("-", 2)
        steps[int(step)].append((int(n), tapped))
    figures = {}
    for step, level in enumerate(LEVELS):
        assert all(t.completion_tokens == case.output_tokens for _, t in steps[step]), "every answer runs to the end"
        measured = [t for n, t in steps[step] if n >= case.warmup_requests]
        start = min(t.start_ns for t in measured)
        end = start + case.duration_s * 1e9
        tokens = sum(
            len([a for a in t.arrivals_ns if start <= a < end]) * t.completion_tokens / len(t.arrivals_ns)
            for _, t in steps[step]
            if t.arrivals_ns
        )
        figures[level] = {
            "output_tokens_per_s": round(tokens / case.duration_s, 1),
            "ttft_ms_p50": round(percentile([(t.arrivals_ns[0] - t.start_ns) / 1e6 for t in measured], 50), 3),
            "requests": len(measured),
        }
    return figures


def prompts_like_the_jobs(case: Case, model_dir: Path, step: int, count: int = 512) -> list[str]:
    """The prompts the job sends at its step `step`, in order: the generator's seeded corpus and its per-step
    random stream (seed 0, the workload's default; a prompt length, the prompt, an output length per request, as
    workers/jobs/loadgen.py draws them), cut to the exact token length with the model's tokenizer. With greedy
    decoding, the same prompts make the same first tokens (a token whose text is empty does not stop TTFT)."""
    builder = PromptBuilder(longest=case.prompt_tokens, seed=0, tokenizer=load_tokenizer(str(model_dir)))
    prompt_length, output_length = (LengthDistribution.fixed(n) for n in (case.prompt_tokens, case.output_tokens))
    rng = random.Random(f"0:{step}")
    prompts = []
    for _ in range(count):
        prompts.append(builder.build(prompt_length.draw(rng), rng)[0])
        output_length.draw(rng)
    return prompts


# -- the test ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", PARAMS)
def test_a_sweep_against_serve_rises_with_batching_and_agrees_with_an_independent_client(
    gateway,
    tap,
    models,
    case,
    admin,
    settings,
):
    model_dir = models[case.size]
    server = ServeProcess(model_dir, "--max-concurrent-requests", "16", env={"API_KEY": SERVER_KEY}).start()
    try:
        server.wait_ready(300)
        host = process_host(f"sweep-{case.size}")
        deployment = DeploymentFactory(
            name=f"sweep-{case.size}",
            state=Deployment.State.RUNNING,
            endpoint=server.url,
            server_key=SERVER_KEY,
            host=host,
        )
        DeploymentSpecFactory(deployment=deployment, artifact=ready_artifact(host, model_dir), current=True)
        workload = {
            "prompt_tokens": case.prompt_tokens,
            "output_tokens": case.output_tokens,
            "levels": list(LEVELS),
            "warmup_requests": case.warmup_requests,
            "duration_s": case.duration_s,
            "sampling": {"temperature": 0},
        }
        # The independent client calls with a key of the starter's own and the same prompts, right before and right
        # after the job (see the module docstring).
        _, key = key_create(actor=admin, name="independent", deployments=[deployment])
        prompts = {level: prompts_like_the_jobs(case, model_dir, step) for step, level in enumerate(LEVELS)}

        def independent(at: Case = case) -> dict[int, dict]:
            return {
                level: independent_level(gateway.url, key, deployment.name, at, level, prompts[level])
                for level in LEVELS
            }

        # A fresh server's first seconds are slower than its steady state (allocator, first shapes of each batch
        # size) beyond a level's warm-up requests: a short unmeasured pass at each level first.
        independent(replace(case, duration_s=1))

        # The job calls the gateway, as callers do. Started by an admin: an engineer's grant would be checked by
        # django-guardian in the gateway process, which caches content-type ids that the database flush between
        # this file's two tests renumbers (the second test's grant then reads as absent: 403).
        def job(through: str) -> BenchmarkRun:
            settings.GATEWAY_PUBLIC_URL = through
            run = services.benchmark_start(actor=admin, deployment=deployment, workload=workload)
            assert runner.run(run.job_id) == "succeeded", list(JobLogLine.objects.filter(job=run.job_id).values("text"))
            return run

        rounds = []
        for _round in range(ROUNDS):
            before = independent()
            run = job(gateway.url)
            after = independent()
            rounds.append(_judged(case, run, before, after))
            if not rounds[-1]["disagreements"]:
                break
        # The same requests timed twice: one more job, through the tap. Not in the rounds above: on these 2 cores
        # the relay's own CPU slows the CPU-bound server by ~5 % while the job runs, which the independent client
        # running direct does not meet.
        seen = len(tap.taps())
        tapped_run = job(tap.url)
        tapped = _tapped_disagreements(case, _figures(tapped_run), tapped_figures(tap.taps()[seen:], case))
    finally:
        server.stop()
    print(f"\n{case.size} (output tokens/s, TTFT p50 ms): a job through the tap {tapped['job']}")
    print(f"  the same requests at the tap {tapped['tapped']}")
    for judged in rounds:
        print(f"{case.size}: job {judged['job']}")
        print(f"  independent before {judged['before']}\n  after {judged['after']}")
    last = rounds[-1]
    one, four = last["job"][1], last["job"][4]
    # Continuous batching: without it four callers get what one gets. The small model out of step (see
    # INDEPENDENT_LEVELS) made 1.45x, in step 2x.
    assert four["output_tokens_per_s"] > 1.3 * one["output_tokens_per_s"]
    assert four["ttft_ms_p50"] > one["ttft_ms_p50"]  # a prompt waits for the running batch's decode step
    # A generator that is wrong is wrong in every round; a machine that slowed during one round's job is not slow
    # in the next: agreement in one of up to ROUNDS rounds, each bracketed by its own independent runs.
    assert not last["disagreements"], [judged["disagreements"] for judged in rounds]
    assert not tapped["disagreements"]


def _figures(run) -> dict[int, dict]:
    steps = {step.concurrency: step for step in run.steps.all()}
    assert not any(step.has_errors for step in steps.values()), [(s.errors, s.extra) for s in steps.values()]
    return {level: {f: getattr(steps[level], f) for f in (*FIGURES, "e2e_ms_p50", "requests")} for level in LEVELS}


def _judged(case: Case, run, before: dict, after: dict) -> dict:
    """One round's job figures against the independent runs around it: the figures outside the bracket +-5 %."""
    job = _figures(run)
    disagreements = []
    for level in INDEPENDENT_LEVELS:
        for figure in FIGURES:
            low, high = sorted((before[level][figure], after[level][figure]))
            floor = CLIENT_STAMP_MS if figure == "ttft_ms_p50" else 0
            if (
                not min(low * (1 - case.agreement), low - floor)
                <= job[level][figure]
                <= max(high * (1 + case.agreement), high + floor)
            ):
                disagreements.append(
                    f"{case.size}, {level} callers, {figure}: job {job[level][figure]}, independent {low}-{high}"
                )
    return {"job": job, "before": before, "after": after, "disagreements": disagreements}


def _tapped_disagreements(case: Case, job: dict, tapped: dict) -> dict:
    """The job's figures against the tap's of the same requests: within 5 %, TTFT plus the relay's hop."""
    disagreements = []
    for level in LEVELS:
        for figure in FIGURES:
            hop = TAP_HOP_MS if figure == "ttft_ms_p50" else 0
            same = tapped[level][figure]
            if not same * (1 - TAP_AGREEMENT) <= job[level][figure] <= same * (1 + TAP_AGREEMENT) + hop:
                disagreements.append(f"{case.size}, {level} callers, {figure}: job {job[level][figure]}, tap {same}")
    return {"job": job, "tapped": tapped, "disagreements": disagreements}
