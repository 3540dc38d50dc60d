"""serve.py on the `small` random Llama (~88M parameters, CPU): one stream's tokens/s over bare
`model.generate` in the ML environment, and 16 concurrent streams over 16 sequential bare calls (what
batching buys), same run. Greedy decoding and the same prompts on both sides; bare and served runs
alternate, pair by pair, so the machine's speed changes hit both alike; the figure is the median pair."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path

from bench.common import ROOT, Figure, median
from tests.support.aio import run_async
from tests.support.serve_process import ServeProcess, make_model, ml_env, ml_python

SINGLE_TOKENS, SINGLE_PAIRS = 64, 5
BATCH_TOKENS, BATCH_PAIRS = 32, 2
STREAMS = 16
PROMPTS = [f"Request {i}: the model server answers question {i} about the bank audit" for i in range(STREAMS)]


class Bare:
    """bench/ml_generate.py kept alive: one generate run per request."""

    def __init__(self, model_dir: Path) -> None:
        self.process = subprocess.Popen(
            [ml_python(), str(ROOT / "bench" / "ml_generate.py"), str(model_dir)],
            env=ml_env(),
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        json.loads(self.process.stdout.readline())

    def rate(self, prompts: list[str], max_new_tokens: int) -> float:
        self.process.stdin.write(json.dumps({"prompts": prompts, "max_new_tokens": max_new_tokens}) + "\n")
        self.process.stdin.flush()
        answer = json.loads(self.process.stdout.readline())
        return answer["tokens"] / answer["seconds"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(30)


def _single_stream(url: str) -> float:
    from text_generation import Client

    client = Client(url, timeout=300)
    started = time.perf_counter()
    events = list(client.generate_stream(PROMPTS[0], max_new_tokens=SINGLE_TOKENS))
    return len(events) / (time.perf_counter() - started)


def _concurrent(url: str) -> float:
    from text_generation import AsyncClient

    async def run() -> int:
        client = AsyncClient(url, timeout=600)

        async def one(prompt: str) -> int:
            return len([event async for event in client.generate_stream(prompt, max_new_tokens=BATCH_TOKENS)])

        return sum(await asyncio.gather(*(one(prompt) for prompt in PROMPTS)))

    started = time.perf_counter()
    tokens = run_async(run())
    return tokens / (time.perf_counter() - started)


def run() -> list[Figure]:
    if ml_python() is None:
        raise RuntimeError("bench_serve needs the ML environment: make ml-env")
    model_dir = make_model(Path(os.environ.get("DATA_DIR", ROOT / ".data-test")) / "bench-models" / "small", "small")
    bare = Bare(model_dir)
    server = ServeProcess(model_dir, "--max-concurrent-requests", "64", "--max-total-tokens", "512").start()
    try:
        server.wait_ready(300)
        _single_stream(server.url)  # warm-up
        singles = [(_single_stream(server.url), bare.rate(PROMPTS[:1], SINGLE_TOKENS)) for _ in range(SINGLE_PAIRS)]
        batches = [(_concurrent(server.url), bare.rate(PROMPTS, BATCH_TOKENS)) for _ in range(BATCH_PAIRS)]
    finally:
        server.stop()
        bare.close()
    single = median([served / plain for served, plain in singles])
    batched = median([served / plain for served, plain in batches])
    return [
        Figure(
            "serve_single_stream_over_bare_generate",
            single,
            "x",
            ">=",
            0.9,
            f"median of {SINGLE_PAIRS} alternating pairs, {SINGLE_TOKENS} tokens; serve "
            f"{median([s for s, _ in singles]):.0f} vs bare {median([b for _, b in singles]):.0f} tok/s",
        ),
        Figure(
            "serve_16_streams_over_16_sequential_generate",
            batched,
            "x",
            ">=",
            3,
            f"median of {BATCH_PAIRS} pairs, {BATCH_TOKENS} tokens each; {STREAMS} streams "
            f"{median([s for s, _ in batches]):.0f} vs sequential {median([b for _, b in batches]):.0f} tok/s",
        ),
    ]
