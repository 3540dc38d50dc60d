"""The benchmark's load generator: streams requests at a deployment in steps of a sweep (closed-loop callers at a
concurrency, or Poisson arrivals at a rate) and reports each step's figures from the token arrival times of every
stream.

    python -m workers.jobs.loadgen --spec FILE

    {
      "base_url": "https://console.example/llm/7",   the gateway's root for the dialect (no trailing path)
      "api_key_file": "/run/key" | "api_key": "...",  an inference key of the starter's (the file is preferred)
      "dialect": "openai-chat" | "openai-completion" | "tgi-generate-stream",
      "model": "name",                                 the `model` field of OpenAI requests
      "workload": {"prompt_tokens": 128 | {distribution}, "output_tokens": 64 | {distribution},
                   "tokenizer": "/models/x/tokenizer.json" | null},     loadgen_workload.py says the shapes
      "steps": [{"concurrency": 1}, {"concurrency": 4}] | [{"rate": 2.5, "max_concurrency": 256}],
      "warmup_s": 2 | "warmup_requests": 4,            per step, before its window
      "duration_s": 30 | "requests": 200,              per step, the window (any of these four can be set per step)
      "sampling": {"temperature": 0, "top_p", "top_k", "seed", "ignore_eos": false, "continuous_usage": false},
      "seed": 0, "request_timeout_s": 300, "tls_verify": true, "raw_path": "/work/raw.jsonl" | null,
      "metrics_urls": ["http://10.0.0.5:8080/metrics"]   the servers' own /metrics, sampled per step (optional)
      "gpu_indexes": [0, 1], "nvml_module": "pynvml"       the servers' GPUs here, read through NVML (optional)
    }

Events: `progress` at each step's start and every few seconds in it; one `metric` event per finished step
{"step", "label", "concurrency" | "rate", figures of bench_figures.step_figures, and with metrics_urls the server
figures of loadgen_metrics.py}; a `result` with every step's
figures at the end. `raw_path` receives one JSON line per request (bench_figures.StreamRecord, times in
perf_counter_ns of this process, plus "step"). SIGTERM cancels the requests in flight and exits EXIT_STOPPED;
the steps already finished were reported.

Why our own generator and not a kept one of the field:
- guidellm (0.8) speaks only OpenAI-compatible routes (no TGI `/generate_stream`), and keeps per request only the
  first and last token time and a count: its ITL is (last - first) / (tokens - 1) per request and its token
  timeline is spread evenly by assumption ("we don't have per-iteration timings"), so there is no per-token
  arrival and no p99 of real gaps; it stamps with time.time() (the wall clock, which NTP can step) after its
  HTTP client (httpx) handed a line over, substitutes 0 for a missing TTFT, and needs torch, transformers and
  datasets >= 5: the ML environment only, for what is an HTTP client.
- text-generation 0.7.0's AsyncClient.generate_stream speaks TGI's stream only, opens a new aiohttp
  ClientSession (and TCP connection) per call, validates every token event with pydantic before handing it
  over and exposes no response headers (TGI's timing headers); a caller can stamp a token only after that work.
- Any client on asyncio transports (aiohttp, httpx) stamps a token when its task runs, after the bytes of every
  other stream that arrived at the same instant were parsed: servers that batch send the tokens of all their
  sequences at once, so at hundreds of streams the generator's own work becomes the error (measured: aiohttp,
  100 streams, p99 several ms).
So the generator reuses the two protocols' request and event shapes (loadgen_streams.py) and reads each socket
itself (loadgen_http.py: recvmsg with the kernel's receive time, httptools for HTTP/1.1 framing, keep-alive
pools, TLS through memory buffers), on uvloop when installed. Its own timing error against a server that stamps
each chunk with its send time is measured by bench/loadgen_ceiling.py (goal: p99 under 1 ms at 500 streams;
measured on a 2-core machine: 0.03 ms at p99 from 100 to 1,500 streams, against several ms for aiohttp at 100).
Each step also reports `generator_lag_ms_p99`, how far behind its reads the generator itself was.

It needs httptools (and `tokenizers` for exact prompt lengths), which the control plane's environment has: the
agent runs it with its own python, not the ML environment's (which has neither).
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
import sys
import time
from collections.abc import Callable
from typing import Any

import httptools

from workers.jobs.bench_figures import NS_PER_MS, NS_PER_S, StreamRecord, percentile, step_figures
from workers.jobs.loadgen_http import Pool
from workers.jobs.loadgen_metrics import sampler_for, step_server_figures
from workers.jobs.loadgen_spec import LoadSpec, Step, parse_spec
from workers.jobs.loadgen_streams import request_body, request_path, stream_request
from workers.jobs.loadgen_workload import PromptBuilder, load_tokenizer, poisson_offsets_ns
from workers.jobs.protocol import Events, Stopped, StopRequest, run_program

PROGRESS_SECONDS = 5.0
STOP_POLL_SECONDS = 0.1


class StepRun:
    """One step: issues requests (closed loop or Poisson), keeps their records and the measurement window."""

    def __init__(self, spec: LoadSpec, step: Step, index: int, prompts: PromptBuilder, run_id: str) -> None:
        self.spec, self.step, self.index, self.prompts, self.run_id = spec, step, index, prompts, run_id
        self.rng = random.Random(f"{spec.seed}:{index}")
        self.records: list[StreamRecord] = []
        self.lags: list[int] = []  # per read: arrival (kernel) to handled (generator), the generator's backlog
        self.path = request_path(spec.dialect)
        self.headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if spec.api_key:
            self.headers["Authorization"] = f"Bearer {spec.api_key}"
        self.t0 = 0
        self.window: tuple[int, int | None] = (0, None)  # start, end (None until known)
        self.measured = 0
        self.closed = False

    # -- what to send ----------------------------------------------------------------------------------------
    def _next(self, scheduled_ns: int | None = None) -> tuple[StreamRecord, bytes, dict[str, str]] | None:
        """The next request, or None once the step has issued all it should."""
        now = time.perf_counter_ns()
        step = self.step
        warmup = len(self.records) < step.warmup_requests or now < self.t0 + round(step.warmup_s * NS_PER_S)
        if not warmup:
            if self.window[0] == 0:
                self.window = (now, now + round(step.duration_s * NS_PER_S) if step.duration_s else None)
            if (step.requests and self.measured >= step.requests) or (self.window[1] and now >= self.window[1]):
                self.closed = True
            if self.closed:
                return None
            self.measured += 1
        text, prompt_tokens = self.prompts.build(self.spec.prompt_tokens.draw(self.rng), self.rng)
        max_tokens = self.spec.output_tokens.draw(self.rng)
        body = request_body(
            self.spec.dialect, model=self.spec.model, prompt=text, max_tokens=max_tokens, sampling=self.spec.sampling
        )
        request_id = f"{self.run_id}-{self.index}-{len(self.records)}"
        record = StreamRecord(
            index=len(self.records), start_ns=now, request_id=request_id, warmup=warmup, scheduled_ns=scheduled_ns
        )
        record.prompt_tokens = prompt_tokens
        self.records.append(record)
        return record, json.dumps(body).encode(), {**self.headers, "X-Request-Id": request_id}

    async def _send(self, pool: Pool, planned: tuple[StreamRecord, bytes, dict]) -> None:
        record, body, headers = planned
        await stream_request(
            pool,
            self.path,
            dialect=self.spec.dialect,
            body=body,
            headers=headers,
            sampling=self.spec.sampling,
            record=record,
            timeout_s=self.spec.request_timeout_s,
            lags=self.lags,
        )

    # -- how --------------------------------------------------------------------------------------------------
    async def _caller(self, pool: Pool) -> None:
        while (planned := self._next()) is not None:
            await self._send(pool, planned)

    async def _closed_loop(self, pool: Pool) -> None:
        await asyncio.gather(*(self._caller(pool) for _ in range(self.step.concurrency)))

    async def _open_loop(self, pool: Pool) -> None:
        rng = random.Random(f"{self.spec.seed}:{self.index}:arrivals")
        limit = asyncio.Semaphore(self.step.max_concurrency) if self.step.max_concurrency else None
        tasks: set[asyncio.Task] = set()

        async def send(planned: tuple) -> None:
            try:
                await self._send(pool, planned)
            finally:
                if limit:
                    limit.release()

        for offset in poisson_offsets_ns(self.step.rate, rng):
            delay = (self.t0 + offset - time.perf_counter_ns()) / NS_PER_S
            if delay > 0:
                await asyncio.sleep(delay)
            if limit:
                await limit.acquire()
            planned = self._next(scheduled_ns=self.t0 + offset)
            if planned is None:
                if limit:
                    limit.release()
                break
            task = asyncio.create_task(send(planned))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)

    async def run(self, pool: Pool, tick: Callable[[], None]) -> dict[str, Any]:
        self.t0 = time.perf_counter_ns()
        work = self._closed_loop(pool) if self.step.concurrency else self._open_loop(pool)
        task = asyncio.ensure_future(work)
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=STOP_POLL_SECONDS)
                tick()
        except Stopped:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise
        task.result()
        return self.figures()

    def figures(self) -> dict[str, Any]:
        start, end = self.window
        if end is None or self.step.requests:  # a request count: from the first measured send to the last end
            measured = [r for r in self.records if not r.warmup]
            end = max((r.end_ns or r.start_ns for r in measured), default=start) + 1
        figures = step_figures(self.records, window_start_ns=start, window_end_ns=end)
        # Not a timing error (stamps are the kernel's): how far behind the generator was; a large one means a
        # closed-loop caller sent its next request that much late.
        figures["generator_lag_ms_p50"] = _ms(percentile(self.lags, 50))
        figures["generator_lag_ms_p99"] = _ms(percentile(self.lags, 99))
        return figures


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value / NS_PER_MS, 3)


async def run_steps(spec: LoadSpec, events: Events, stop: StopRequest) -> list[dict[str, Any]]:
    tokenizer = load_tokenizer(spec.tokenizer) if spec.tokenizer else None
    prompts = PromptBuilder(longest=spec.prompt_tokens.maximum, seed=spec.seed, tokenizer=tokenizer)
    run_id = f"bench{spec.seed}-{int(time.time())}"
    raw = open(spec.raw_path, "w", encoding="utf-8") if spec.raw_path else None  # noqa: SIM115 (closed below)
    results = []
    try:
        for index, step in enumerate(spec.steps):
            if stop.requested:
                raise Stopped
            events.progress(index, len(spec.steps), label=step.label)
            # No cyclic garbage collection while tokens are stamped: with hundreds of streams' records alive, a
            # full collection stalls the event loop for tens of milliseconds, a read that comes that late returns
            # several chunks under one kernel stamp, and the stall becomes timing error (bench/loadgen_ceiling.py:
            # p99 error of one token interval, 50 ms, at 500 streams). Refcounting still frees the step's garbage;
            # the cycles wait for the collection after the step.
            gc.disable()
            try:
                figures = await _one_step(spec, step, index, prompts, run_id, events, stop, raw)
            finally:
                gc.enable()
                gc.collect()
            events.metric(step=index, label=step.label, **step.load(), **figures)
            results.append({"step": index, "label": step.label, **step.load(), **figures})
    finally:
        if raw:
            raw.close()
    return results


async def _one_step(spec, step, index, prompts, run_id, events, stop, raw) -> dict[str, Any]:
    step_run = StepRun(spec, step, index, prompts, run_id)
    last_tick = [time.monotonic()]

    def tick() -> None:
        if stop.requested:
            raise Stopped
        if time.monotonic() - last_tick[0] >= PROGRESS_SECONDS:
            last_tick[0] = time.monotonic()
            done = sum(1 for r in step_run.records if r.end_ns is not None)
            events.progress(index, len(spec.steps), label=step.label, requests_done=done)

    # The servers' own /metrics and GPUs beside the step (loadgen_metrics.py): read before and after it, in a thread
    # between.
    sampler = sampler_for(spec)
    if sampler:
        sampler.start()
    pool = Pool(spec.base_url, tls_verify=spec.tls_verify)
    try:
        figures = await step_run.run(pool, tick)
    finally:
        pool.close()
        if sampler:
            sampler.stop()
    figures["stamps"] = "kernel" if pool.kernel_stamps else "read"
    if sampler:
        figures.update(step_server_figures(sampler, figures, step_run.window))
    if raw:
        for record in step_run.records:
            raw.write(json.dumps({"step": index, **record.as_dict()}) + "\n")
        raw.flush()
    return figures


def _event_loop_runner() -> Callable:
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def run(raw: dict[str, Any], events: Events, stop: StopRequest) -> None:
    spec = parse_spec(raw)
    events.log(f"{len(spec.steps)} steps against {spec.base_url} ({spec.dialect}, model {spec.model or '-'})")
    try:
        steps = _event_loop_runner()(run_steps(spec, events, stop))
    except asyncio.CancelledError as exc:
        raise Stopped from exc
    events.result(steps=steps, raw_path=spec.raw_path, generator=generator_info())


def generator_info() -> dict[str, str]:
    loop = "uvloop" if _event_loop_runner() is not asyncio.run else "asyncio"
    return {
        "name": "workers.jobs.loadgen",
        "httptools": httptools.__version__,
        "loop": loop,
        "python": sys.version.split()[0],
    }


def main(argv: list[str] | None = None) -> int:
    return run_program(run, argv, prog="python -m workers.jobs.loadgen")


if __name__ == "__main__":
    sys.exit(main())
