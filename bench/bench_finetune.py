"""Fine-tune: training tokens/s through the job program over the same TRL SFTTrainer run written as a bare
script, same run, same ML environment, one run each.

The job runs as the console starts it (`workers.mlenv.job_command("finetune")`, `job_env`) and is read as the
console reads it: the trained tokens from its last metric event (TRL's `num_tokens`), the time from its result
event (`training_seconds`: `trainer.train()` and the final adapter's save with its manifest). The bare script
builds the same SFTConfig, LoRA config, model and data by hand and times `trainer.train()` and `save_model`.
Both train a ~16M-parameter random Llama with LoRA on CPU for the same steps, with a checkpoint half-way, so
the figure is what the job's events, callback and manifests cost.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import tempfile
import textwrap
from pathlib import Path

from bench.common import ROOT, Figure
from tests.support.serve_process import ml_python

# ~16M parameters: wide enough that a step is real work, small enough for a run of about a minute on 2 cores.
MODEL_SHAPE = {
    "vocab": 8000,
    "hidden_size": 384,
    "intermediate_size": 1024,
    "num_hidden_layers": 6,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
}
HYPERPARAMETERS = {"learning_rate": 2e-4, "max_steps": 24, "batch_size": 8, "max_seq_len": 512, "seed": 11}
CHECKPOINT_EVERY = 12
RECORDS = 256
# Words the random model's tokenizer was trained on (workers/jobs/tiny_model.py): a token or two each.
WORDS = (
    "the model server deploys tokens gpu memory cache batch request stream answer question data bank hospital "
    "factory mine audit console host weights layer attention prefill decode shard quick brown fox jumps over "
    "lazy dog hello world my name is and i am you we"
)

MAKE_MODEL = """
import sys, json
from workers.jobs import tiny_model
tiny_model.SIZES["bench"] = json.loads(sys.argv[2])
tiny_model.make_tiny_model(sys.argv[1], "bench")
"""

# The same training as the job, as one would write it without the console: the same TRL and peft settings.
BARE_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import datasets, torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    model_dir, data, out = sys.argv[1:4]
    hyper, save_steps = json.loads(sys.argv[4]), int(sys.argv[5])
    torch.manual_seed(hyper["seed"])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    train_set = datasets.load_dataset("json", data_files=data, split="train")
    args = SFTConfig(
        output_dir=out + "/checkpoints",
        max_steps=hyper["max_steps"],
        per_device_train_batch_size=hyper["batch_size"],
        learning_rate=hyper["learning_rate"],
        seed=hyper["seed"],
        data_seed=hyper["seed"],
        max_length=hyper["max_seq_len"],
        use_cpu=True,
        bf16=False,  # TRL's defaults differ from the job's (fp32 on CPU, no gradient checkpointing)
        gradient_checkpointing=False,
        logging_steps=1,
        save_strategy="steps",
        save_steps=save_steps,
        report_to="none",
        disable_tqdm=True,
        shuffle_dataset=False,
    )
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=train_set, processing_class=tokenizer, peft_config=lora
    )
    started = time.monotonic()
    trainer.train()
    trainer.save_model(out + "/adapter")
    seconds = time.monotonic() - started
    tokens = [entry["num_tokens"] for entry in trainer.state.log_history if "num_tokens" in entry][-1]
    print(json.dumps({"tokens": tokens, "seconds": seconds}), file=sys.__stdout__)
    """
)


def _dataset(path: Path) -> None:
    """Prompt/completion records of 60 to 160 words from a fixed vocabulary, the same file for both runs."""
    rng = random.Random(5)
    words = WORDS.split()
    with open(path, "w") as handle:
        for _ in range(RECORDS):
            prompt = " ".join(rng.choice(words) for _ in range(rng.randint(20, 60)))
            completion = " " + " ".join(rng.choice(words) for _ in range(rng.randint(40, 100))) + "."
            handle.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")


def _job(spec: dict, work: Path, env: dict[str, str]) -> tuple[float, float, list[float]]:
    """Trained tokens, seconds and the streamed tokens/s values, from the job's events as the console reads them."""
    from workers.jobs.protocol import EXIT_OK, parse_event
    from workers.mlenv import job_command

    (work / "spec.json").write_text(json.dumps(spec))
    done = subprocess.run(
        job_command("finetune", "--spec", str(work / "spec.json")),
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    events = [event for event in map(parse_event, done.stdout.splitlines()) if event is not None]
    if done.returncode != EXIT_OK:
        raise RuntimeError(f"the fine-tune job exited {done.returncode}: {events[-2:]} {done.stderr[-2000:]}")
    metrics = [event for event in events if event["type"] == "metric"]
    tokens = [event["num_tokens"] for event in metrics if "num_tokens" in event][-1]
    streamed = [event["tokens_per_second"] for event in metrics if "tokens_per_second" in event]
    [result] = [event for event in events if event["type"] == "result"]
    return tokens, result["training_seconds"], streamed


def _bare(model: Path, data: Path, work: Path, env: dict[str, str]) -> tuple[float, float]:
    script = work / "bare_sft.py"
    script.write_text(BARE_SCRIPT)
    arguments = [str(model), str(data), str(work / "bare"), json.dumps(HYPERPARAMETERS), str(CHECKPOINT_EVERY)]
    done = subprocess.run(
        [ml_python(), str(script), *arguments], env=env, cwd=work, capture_output=True, text=True, timeout=1800
    )
    if done.returncode != 0:
        raise RuntimeError(f"the bare SFT script failed: {done.stderr[-2000:]}")
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    return answer["tokens"], answer["seconds"]


def run() -> list[Figure]:
    from workers.mlenv import job_env

    if ml_python() is None:
        raise RuntimeError("bench_finetune needs the ML environment: make ml-env")
    work = Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    try:
        # One thread each: two spinning OpenMP threads on shared cores turn any other load into noise.
        env = job_env(
            {"HOME": str(work), "HF_HOME": str(work / "hf"), "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        )
        model, data = work / "model", work / "train.jsonl"
        subprocess.run(
            [ml_python(), "-c", MAKE_MODEL, str(model), json.dumps(MODEL_SHAPE)],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
            timeout=600,
        )
        _dataset(data)
        spec = {
            "base_model": str(model),
            "dataset": str(data),
            "output_dir": str(work / "job"),
            "method": "lora",
            "checkpoint_every": CHECKPOINT_EVERY,
            "hyperparameters": HYPERPARAMETERS,
        }
        job_tokens, job_seconds, streamed = _job(spec, work, env)
        bare_tokens, bare_seconds = _bare(model, data, work, env)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    job_rate, bare_rate = job_tokens / job_seconds, bare_tokens / bare_seconds
    streamed_median = sorted(streamed)[len(streamed) // 2] if streamed else 0.0
    return [
        Figure(
            "finetune_tokens_per_second_over_bare_trl",
            job_rate / bare_rate,
            "x",
            ">=",
            0.9,
            f"job {job_rate:.0f} tok/s ({job_tokens:.0f} tokens in {job_seconds:.1f} s; its metric events "
            f"stream {streamed_median:.0f} tok/s) vs bare SFTTrainer {bare_rate:.0f} tok/s ({bare_tokens:.0f} "
            f"tokens in {bare_seconds:.1f} s), LoRA on a ~16M random Llama, {HYPERPARAMETERS['max_steps']} steps "
            f"of batch {HYPERPARAMETERS['batch_size']}, CPU, one run each",
        )
    ]
