"""Evaluate: perplexity tokens/s through the job program over the same computation as a bare script, same model,
same windows, same ML environment and threads.

The job runs as the console starts it (`workers.mlenv.job_command("evaluate")`, `job_env`) and is read as the
console reads it: scored tokens and seconds from its result event (the windows' forward passes and losses, after
one untimed warm-up pass). The bare script tokenizes the same text, cuts the same sliding windows (written here
on its own, not imported from the program), runs one warm-up pass and times the same batched forwards with the
same logits kept and the same summed cross-entropy. Both on the `small` random Llama (~88M parameters) on CPU,
alternating job and bare twice and keeping each side's best, so a neighbour's burst on the shared cores costs
neither side more than the other.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
import textwrap
from pathlib import Path

from bench.common import ROOT, Figure
from tests.support.serve_process import make_model, ml_python

CONTEXT, STRIDE, MAX_TOKENS, BATCH = 256, 128, 4097, 4  # 31 windows of 256: ~10 s timed a run, one core
ROUNDS = 2

BARE_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, text_file = sys.argv[1:3]
    context, stride, max_tokens, batch = map(int, sys.argv[3:7])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer(open(text_file, encoding="utf-8").read())["input_ids"][:max_tokens]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokens = torch.tensor(ids)
    last = len(ids) - 1
    length = min(context, last)
    windows, scored, begin = [], 0, 0  # (start, tokens not scored before); the last window ends at the end
    while scored < last:
        end = min(begin + length, last)
        windows.append((end - length, end - scored))
        scored, begin = end, begin + stride
    groups = [windows[i : i + batch] for i in range(0, len(windows), batch)]
    with torch.inference_mode():
        model(input_ids=torch.stack([tokens[s : s + length] for s, _ in groups[0]]), use_cache=False)
        total = torch.zeros((), dtype=torch.float64)
        started = time.perf_counter()
        for group in groups:
            keep = max(new for _, new in group)
            inputs = torch.stack([tokens[s : s + length] for s, _ in group])
            labels = torch.stack([tokens[s + length + 1 - keep : s + length + 1] for s, _ in group])
            for row, (_, new) in enumerate(group):
                labels[row, : keep - new] = -100
            logits = model(input_ids=inputs, use_cache=False, logits_to_keep=keep).logits
            total += F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum")
        nll = total.item() / scored
        seconds = time.perf_counter() - started
    print(json.dumps({"tokens": scored, "seconds": seconds, "nll": nll}))
    """
)


def _job(spec_file: Path, env: dict[str, str]) -> dict:
    from workers.jobs.protocol import EXIT_OK, parse_event
    from workers.mlenv import job_command

    done = subprocess.run(
        job_command("evaluate", "--spec", str(spec_file)),
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    events = [event for event in map(parse_event, done.stdout.splitlines()) if event is not None]
    if done.returncode != EXIT_OK:
        raise RuntimeError(f"the evaluate job exited {done.returncode}: {events[-2:]} {done.stderr[-2000:]}")
    [result] = [event for event in events if event["type"] == "result"]
    return result["models"]["small"]


def _bare(script: Path, model: Path, text: Path, env: dict[str, str]) -> dict:
    arguments = [str(model), str(text), *map(str, (CONTEXT, STRIDE, MAX_TOKENS, BATCH))]
    done = subprocess.run(
        [ml_python(), str(script), *arguments], env=env, cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0:
        raise RuntimeError(f"the bare perplexity script failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run() -> list[Figure]:
    from workers.jobs.evaluate_spec import DEFAULT_PERPLEXITY_TEXT
    from workers.mlenv import job_env

    if ml_python() is None:
        raise RuntimeError("bench_eval needs the ML environment: make ml-env")
    model = make_model(Path(os.environ.get("DATA_DIR", ROOT / ".data-test")) / "bench-models" / "small", "small")
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as scratch:
        work = Path(scratch)
        # One thread each: two spinning OpenMP threads on shared cores turn any other load into noise.
        env = job_env({"HOME": str(work), "HF_HOME": str(work / "hf"), "OMP_NUM_THREADS": "1"})
        spec = {
            "models": [{"id": "small", "path": str(model)}],
            "perplexity": {"context_length": CONTEXT, "stride": STRIDE, "max_tokens": MAX_TOKENS},
            "device": "cpu",
            "batch_size": BATCH,
        }
        (work / "spec.json").write_text(json.dumps(spec))
        (work / "bare_perplexity.py").write_text(BARE_SCRIPT)
        jobs, bares = [], []
        for _ in range(ROUNDS):
            jobs.append(_job(work / "spec.json", env))
            bares.append(_bare(work / "bare_perplexity.py", model, DEFAULT_PERPLEXITY_TEXT, env))
    job = max(jobs, key=lambda figures: figures["tokens"] / figures["seconds"])
    bare = max(bares, key=lambda figures: figures["tokens"] / figures["seconds"])
    if job["tokens"] != bare["tokens"] or abs(job["nll"] - bare["nll"]) > 1e-4 * bare["nll"]:
        raise RuntimeError(f"the job and the bare script computed different things: {job} vs {bare}")
    job_rate, bare_rate = job["tokens"] / job["seconds"], bare["tokens"] / bare["seconds"]
    spread = ", ".join(
        f"{side} " + "/".join(f"{run['tokens'] / run['seconds']:.0f}" for run in runs)
        for side, runs in (("job", jobs), ("bare", bares))
    )
    return [
        Figure(
            "eval_perplexity_tokens_per_second_over_bare",
            job_rate / bare_rate,
            "x",
            ">=",
            0.9,
            f"job {job_rate:.0f} tok/s vs bare loop {bare_rate:.0f} tok/s ({job['tokens']} tokens scored, windows of "
            f"{CONTEXT} every {STRIDE}, batch {BATCH}, perplexity {math.exp(job['nll']):.1f} both), the small "
            f"random Llama, CPU, one thread, best of {ROUNDS} alternating runs each ({spread} tok/s)",
        )
    ]
