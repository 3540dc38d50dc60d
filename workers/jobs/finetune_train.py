"""The training itself: transformers + peft + TRL's SFTTrainer, with a callback that turns the trainer's logs,
steps and saves into protocol events and honours a stop request at the next step boundary. Imported by
finetune.py only after the spec and the data passed their checks (torch takes seconds to import).

Data parallel (torchrun, `workers.mlenv.distributed_job_command`): every rank trains its share of each global
batch (gloo on CPU); rank 0 alone emits progress, metrics, checkpoints and the result and writes manifests and
the final adapter or model (the launcher sends the other ranks' stdout to its log files); a stop request on any
rank stops every rank after the same step's checkpoint."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback, set_seed

from workers.jobs.finetune_data import DatasetScan, iter_records
from workers.jobs.finetune_spec import FinetuneSpec
from workers.jobs.heldout_split import cache_dir_for, load_records, train_eval_split
from workers.jobs.manifest import read_manifest, write_manifest
from workers.jobs.protocol import BadInput, Events, Stopped, StopRequest

CHECKPOINTS = "checkpoints"


def newest_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint-N with the highest N that has a manifest (one without was cut off mid-save)."""
    found = []
    for path in Path(directory).glob("checkpoint-*"):
        suffix = path.name.removeprefix("checkpoint-")
        if suffix.isdigit() and read_manifest(path) is not None:
            found.append((int(suffix), path))
    return max(found)[1] if found else None


def choose_precision(spec: FinetuneSpec, events: Events) -> tuple[str, torch.dtype]:
    """The precision that will really run: CPU trains in fp32 whatever was asked."""
    if not torch.cuda.is_available():
        if spec.precision not in ("auto", "fp32"):
            events.log(f"No CUDA device: training in fp32 instead of {spec.precision}.", level="warning")
        return "fp32", torch.float32
    precision = spec.precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise BadInput("This GPU has no bf16; choose fp16 or fp32.", cause="precision_unsupported", field="precision")
    return precision, {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def check_method(spec: FinetuneSpec) -> None:
    if spec.method != "qlora":
        return
    if not torch.cuda.is_available():
        raise BadInput(
            "QLoRA needs a CUDA GPU (4-bit bitsandbytes kernels); this host has none.",
            cause="qlora_needs_cuda",
            field="method",
            next_step="Choose LoRA here, or run QLoRA on a host with a CUDA GPU.",
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise BadInput(
            "QLoRA needs the bitsandbytes package, which this ML environment lacks.",
            cause="qlora_needs_bitsandbytes",
            field="method",
            next_step="Install bitsandbytes in the ML image, or choose LoRA.",
        ) from exc


def load_model(spec: FinetuneSpec, dtype: torch.dtype):
    kwargs: dict[str, Any] = {"dtype": dtype}
    if spec.method == "qlora":
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True
        )
        kwargs["device_map"] = {"": torch.cuda.current_device()}
        model = AutoModelForCausalLM.from_pretrained(spec.base_model, **kwargs)
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=spec.gradient_checkpointing)
    return AutoModelForCausalLM.from_pretrained(spec.base_model, **kwargs)


def load_tokenizer(spec: FinetuneSpec):
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.base_model)
    except (OSError, ValueError) as exc:
        raise BadInput(
            f"The base model at {spec.base_model} has no usable tokenizer.", cause="no_tokenizer", field="base_model"
        ) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _token_count(tokenizer, record: dict[str, Any]) -> int:
    if "messages" in record:
        return len(tokenizer.apply_chat_template(record["messages"], tokenize=True, return_dict=False))
    text = record["text"] if "text" in record else record["prompt"] + record["completion"]
    return len(tokenizer(text)["input_ids"]) + 1  # TRL appends the end-of-sequence token


def check_lengths(spec: FinetuneSpec, scan: DatasetScan, tokenizer) -> None:
    """Refuse rows longer than max_seq_len instead of silently cutting their ends off (by line, never quoted)."""
    limit, too_long = spec.hyperparameters["max_seq_len"], []
    for number, record in iter_records(spec.dataset, scan.shape, with_lines=True):
        if _token_count(tokenizer, record) > limit:
            too_long.append(number)
    if too_long:
        more = f" ({len(too_long) - 1} more rows are too long)" if len(too_long) > 1 else ""
        raise BadInput(
            f"Line {too_long[0]} of {Path(spec.dataset).name} is longer than max_seq_len ({limit} tokens).{more}",
            cause="row_too_long",
            line=too_long[0],
            field="hyperparameters.max_seq_len",
            next_step="Raise max_seq_len, or shorten or split the long rows and add the dataset as a new version.",
        )


def build_datasets(spec: FinetuneSpec, scan: DatasetScan):
    """Arrow-backed (memory-mapped) train and eval sets in file order, the eval share drawn with the seed (the
    split the evaluate job can score again: workers/jobs/heldout_split.py)."""
    data = load_records(spec.dataset, scan.shape, cache_dir_for(spec.output_dir))
    if not spec.eval_fraction:
        return data, None
    return train_eval_split(data, spec.eval_fraction, spec.hyperparameters["seed"])


def lora_config(spec: FinetuneSpec):
    if spec.method == "full":
        return None
    from peft import LoraConfig

    hyper = spec.hyperparameters
    return LoraConfig(
        r=hyper["lora_r"],
        lora_alpha=hyper["lora_alpha"],
        lora_dropout=hyper["lora_dropout"],
        target_modules=hyper["target_modules"],
        modules_to_save=hyper["modules_to_save"],
        task_type="CAUSAL_LM",
    )


def sft_config(spec: FinetuneSpec, precision: str):
    from trl import SFTConfig

    hyper = spec.hyperparameters
    steps_or_epochs = {"max_steps": hyper["max_steps"]} if hyper["max_steps"] else {"num_train_epochs": hyper["epochs"]}
    evaluating = bool(spec.eval_fraction)
    return SFTConfig(
        output_dir=str(Path(spec.output_dir) / CHECKPOINTS),
        **steps_or_epochs,
        per_device_train_batch_size=hyper["batch_size"],
        per_device_eval_batch_size=hyper["batch_size"],
        gradient_accumulation_steps=hyper["grad_accumulation"],
        learning_rate=hyper["learning_rate"],
        lr_scheduler_type=hyper["scheduler"],
        warmup_steps=hyper["warmup_steps"] or hyper["warmup_ratio"],
        weight_decay=hyper["weight_decay"],
        max_grad_norm=hyper["max_grad_norm"],
        seed=hyper["seed"],
        data_seed=hyper["seed"],
        max_length=hyper["max_seq_len"],
        packing=hyper["packing"],
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        # CPU data parallel is gloo, never an MPI or oneCCL that happens to be installed; CUDA picks NCCL.
        ddp_backend="gloo" if _world_size() > 1 and not torch.cuda.is_available() else None,
        gradient_checkpointing=spec.gradient_checkpointing,
        logging_steps=spec.logging_every,
        save_strategy="steps",
        save_steps=spec.checkpoint_every,
        save_total_limit=None,  # the console moves and prunes checkpoints by tier
        eval_strategy="steps" if evaluating else "no",
        eval_steps=spec.eval_every if evaluating else None,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        shuffle_dataset=False,
        dataset_num_proc=None,
    )


def _world_size() -> int:
    """How many processes train together: torchrun sets WORLD_SIZE; a plain run is one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _distributed_any(flag: bool, device: torch.device) -> bool:
    """Every rank must stop at the same step, or the next collective hangs."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    value = torch.tensor([1 if flag else 0], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class EventsCallback(TrainerCallback):
    """Trainer hooks → protocol events; a stop request becomes save-then-stop at the step that just ended."""

    def __init__(self, events: Events, stop: StopRequest, lineage: dict[str, Any]) -> None:
        self.events, self.stop, self.lineage = events, stop, lineage
        self.metrics: dict[str, float] = {}
        self.step_seconds: list[float] = []
        self.total_step_seconds = 0.0
        self.steps_timed = 0
        self.last_tokens: float | None = None
        self._step_started = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        took = time.perf_counter() - self._step_started
        self.step_seconds.append(took)
        self.total_step_seconds += took
        self.steps_timed += 1
        if state.is_world_process_zero:
            left = max(state.max_steps - state.global_step, 0)
            eta = round(left * self.total_step_seconds / self.steps_timed, 1)
            self.events.progress(state.global_step, state.max_steps, eta_seconds=eta)
        if _distributed_any(self.stop.requested, args.device):
            self.stop.request(self.stop.signal)
            control.should_save = True
            control.should_training_stop = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        values = {name: value for name, value in (logs or {}).items() if _number(value)}
        if "loss" in values and self.step_seconds:
            window = sum(self.step_seconds)
            values["step_time"] = window / len(self.step_seconds)
            tokens = values.get("num_tokens")
            if tokens is not None and self.last_tokens is not None and tokens >= self.last_tokens and window > 0:
                values["tokens_per_second"] = (tokens - self.last_tokens) / window
            self.last_tokens = tokens
            self.step_seconds = []
        self.metrics.update(values)
        if state.is_world_process_zero and values:
            self.events.metric(step=state.global_step, **values)

    def on_save(self, args, state, control, **kwargs):
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()  # every rank's files are on disk before the manifest lists them
        if not state.is_world_process_zero:
            return
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        manifest = write_manifest(path, step=state.global_step, metrics=self.metrics, lineage=self.lineage)
        self.events.checkpoint(str(path), state.global_step, manifest)


def resume_point(spec: FinetuneSpec, events: Events) -> str | None:
    if spec.resume_from is None:
        return None
    if spec.resume_from == "latest":
        newest = newest_checkpoint(Path(spec.output_dir) / CHECKPOINTS)
        events.log(f"Resuming from {newest}." if newest else "No complete checkpoint yet: starting from step 0.")
        return str(newest) if newest else None
    if read_manifest(spec.resume_from) is None:
        raise BadInput(
            f"{spec.resume_from} is not a complete checkpoint (no manifest.json).",
            cause="bad_checkpoint",
            field="resume_from",
            next_step='Resume from another checkpoint, or use "latest".',
        )
    events.log(f"Resuming from {spec.resume_from}.")
    return spec.resume_from


def train(spec: FinetuneSpec, scan: DatasetScan, events: Events, stop: StopRequest, lineage: dict[str, Any]) -> None:
    """Train, save the adapter (or the full model) with its manifest, and emit the result; Stopped on request."""
    from trl import SFTTrainer

    check_method(spec)
    precision, dtype = choose_precision(spec, events)
    resume = resume_point(spec, events)
    Path(spec.output_dir).mkdir(parents=True, exist_ok=True)
    set_seed(spec.hyperparameters["seed"])
    tokenizer = load_tokenizer(spec)
    check_lengths(spec, scan, tokenizer)
    train_set, eval_set = build_datasets(spec, scan)
    model = load_model(spec, dtype)
    args = sft_config(spec, precision)
    # batch_size is per process: the manifest says how many there were, so the global batch can be told.
    lineage = {**lineage, "precision": precision, "processes": args.world_size}
    callback = EventsCallback(events, stop, lineage)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        peft_config=lora_config(spec),
        callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)  # the metric events carry the same numbers
    started = time.monotonic()
    events.log(f"Training {spec.method} in {precision} on {scan.rows} {scan.shape} records.")
    output = trainer.train(resume_from_checkpoint=resume)
    state = trainer.state
    if stop.requested and state.global_step < state.max_steps:
        events.log(f"Stopped on request at step {state.global_step}, after its checkpoint.")
        raise Stopped
    if not state.is_world_process_zero:
        return
    final = Path(spec.output_dir) / ("model" if spec.method == "full" else "adapter")
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    trainer.save_model(str(partial))
    metrics = {**callback.metrics, **{k: v for k, v in output.metrics.items() if _number(v)}}
    manifest = write_manifest(partial, step=state.global_step, metrics=metrics, lineage=lineage)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)  # a half-written adapter is never visible under its name
    events.result(
        kind="full_model" if spec.method == "full" else "adapter",
        path=str(final),
        step=state.global_step,
        metrics=metrics,
        training_seconds=round(time.monotonic() - started, 3),
        files=len(manifest["files"]),
    )
