"""serve.py on the `small` random Llama (~88M parameters, CPU): one stream's tokens/s over bare
`model.generate` in the ML environment, and 16 concurrent streams over 16 sequential bare calls (what
batching buys), same run. Greedy decoding and the same prompts on both sides."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path

from bench.common import ROOT, Figure, median
from tests.support.serve_process import ServeProcess, make_model, ml_env, ml_python

MAX_NEW_TOKENS = 48
STREAMS = 16
ROUNDS = 3
PROMPTS = [f"Request {i}: the model server answers question {i} about the bank audit" for i in range(STREAMS)]


def _bare(model_dir: Path) -> dict:
    out = subprocess.run([ml_python(), str(ROOT / "bench" / "ml_generate.py"), str(model_dir), json.dumps(PROMPTS),
                          str(MAX_NEW_TOKENS)], env=ml_env(), cwd=ROOT, capture_output=True, text=True, check=True,
                         timeout=900)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _single_stream(url: str) -> tuple[int, float]:
    from text_generation import Client

    client = Client(url, timeout=300)
    started = time.perf_counter()
    events = list(client.generate_stream(PROMPTS[0], max_new_tokens=MAX_NEW_TOKENS))
    return len(events), time.perf_counter() - started


def _concurrent(url: str) -> tuple[int, float]:
    from text_generation import AsyncClient

    async def run() -> int:
        client = AsyncClient(url, timeout=600)

        async def one(prompt: str) -> int:
            return len([event async for event in client.generate_stream(prompt, max_new_tokens=MAX_NEW_TOKENS)])

        return sum(await asyncio.gather(*(one(prompt) for prompt in PROMPTS)))

    started = time.perf_counter()
    tokens = asyncio.run(run())
    return tokens, time.perf_counter() - started


def run() -> list[Figure]:
    if ml_python() is None:
        raise RuntimeError("bench_serve needs the ML environment: make ml-env")
    model_dir = make_model(Path(os.environ.get("DATA_DIR", ROOT / ".data-test")) / "bench-models" / "small", "small")
    single_ratios, batch_ratios = [], []
    notes = []
    for _ in range(ROUNDS):
        bare = _bare(model_dir)
        server = ServeProcess(model_dir, "--max-concurrent-requests", "64", "--max-total-tokens", "512").start()
        try:
            server.wait_ready(300)
            _single_stream(server.url)  # warm-up
            tokens, seconds = _single_stream(server.url)
            batch_tokens, batch_seconds = _concurrent(server.url)
        finally:
            server.stop()
        bare_single = bare["single_tokens"] / bare["single_seconds"]
        bare_sequential = bare["sequential_tokens"] / bare["sequential_seconds"]
        single_ratios.append((tokens / seconds) / bare_single)
        batch_ratios.append((batch_tokens / batch_seconds) / bare_sequential)
        notes.append(f"serve {tokens / seconds:.0f} vs bare {bare_single:.0f} tok/s; "
                     f"{STREAMS} streams {batch_tokens / batch_seconds:.0f} vs sequential {bare_sequential:.0f} tok/s")
    return [
        Figure("serve_single_stream_over_bare_generate", median(single_ratios), "x", ">=", 0.9,
               f"median of {ROUNDS}; {notes[-1].split(';')[0]}"),
        Figure("serve_16_streams_over_16_sequential_generate", median(batch_ratios), "x", ">=", 3,
               f"median of {ROUNDS}; {notes[-1].split(';')[1].strip()}"),
    ]
