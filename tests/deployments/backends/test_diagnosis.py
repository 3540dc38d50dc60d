"""Failure diagnosis of TGI launch logs: one case per rule, made of real log lines (tests/support/tgi_logs.py)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.utils import translation

from deployments.backends.tgi.diagnosis import (
    CAUSES,
    MAX_EVIDENCE,
    RULES,
    Diagnosis,
    diagnose,
    diagnose_text,
    log_lines,
)
from tests.support import tgi_logs as logs
from tests.support.fixtures import ROOT

# (log, cause, a line of evidence that must be there, words the title must hold)
CASES = [
    (
        logs.CUDA_OOM_LOADING,
        "cuda_oom",
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        "2.00 GiB",
    ),
    (logs.JSON_CUDA_OOM_LOADING, "cuda_oom", "torch.OutOfMemoryError: CUDA out of memory", "896.00 MiB"),
    (logs.WARMUP_OOM, "warmup_memory", "RuntimeError: Not enough memory to handle 4096 prefill tokens", "4096"),
    (logs.KV_CAPACITY, "kv_capacity", "Error: Backend(NotEnoughMemory(32768))", "32768"),
    (logs.KV_CAPACITY_DISPLAY, "kv_capacity", "Not enough memory to handle `max_total_tokens=32768`", "32768"),
    (logs.SHM, "shm", "Shard process was signaled to shutdown with signal 7 rank=1", "/dev/shm"),
    (logs.HOST_OOM_KILL, "host_oom_kill", "Shard process was signaled to shutdown with signal 9 rank=0", "RAM"),
    (logs.GATED, "auth", "Access to model meta-llama/Llama-3.1-8B-Instruct is restricted", "gated"),
    (logs.REPO_NOT_FOUND, "not_found", "huggingface_hub.errors.RepositoryNotFoundError: 401 Client Error", "not found"),
    (logs.OFFLINE_NOT_CACHED, "not_found", "Please run `text-generation-server download-weights", "not found"),
    (logs.NO_LOCAL_WEIGHTS, "not_found", "No local weights found in /data/models/llama-8b", "not found"),
    (logs.OFFLINE_MODE, "not_found", "OfflineModeIsEnabled: Cannot reach", "not found"),
    (logs.UNSUPPORTED_MODEL, "incompatible", "ValueError: Unsupported model type mamba2", "cannot run"),
    (logs.FLASH_ATTENTION_REQUIRED, "incompatible", "requires Flash Attention enabled models", "cannot run"),
    (logs.DTYPE_AND_QUANTIZE, "incompatible", "Only 1 can be set between `dtype` and `quantize`", "cannot run"),
    (logs.EXL2_SHARDED, "incompatible", "Sharding is currently not supported with `exl2` quantization", "cannot run"),
    (logs.ARGUMENT_VALIDATION, "invalid_arguments", "Error: ArgumentValidation(", "must be < `max_total_tokens`"),
    (logs.NOT_ENOUGH_CUDA_DEVICES, "invalid_arguments", "NotEnoughCUDADevices", "only found 1 CUDA devices"),
    (logs.PORT_IN_USE, "port_in_use", "Failed to bind to 0.0.0.0:80: Address already in use", "Port 80"),
    (logs.JSON_PORT_IN_USE, "port_in_use", "Failed to bind to 0.0.0.0:8080: Address already in use", "Port 8080"),
    (logs.PROMETHEUS_PORT_IN_USE, "port_in_use", "FailedToCreateHTTPListener", "already in use"),
    (logs.IMAGE_MISSING, "image_missing", "manifest unknown", "image"),
    (
        logs.NO_SUCH_IMAGE,
        "image_missing",
        "No such image: ghcr.io/huggingface/text-generation-inference:3.3.5",
        "image",
    ),
    (logs.GPU_RUNTIME, "gpu_runtime", 'could not select device driver "" with capabilities: [[gpu]]', "GPU driver"),
    (logs.NVIDIA_DRIVER_TOO_OLD, "gpu_runtime", "CUDA driver version is insufficient", "GPU driver"),
    (logs.NETWORK, "network", "Retry 1/4", "could not reach"),
    (logs.BINARY_MISSING, "binary_missing", "text-generation-server not found in PATH", "not installed"),
    (logs.DEADLINE, "health_deadline", "Deadline passed while loading the shards", "still loading the shards"),
    (logs.SHARD_CRASHED, "crashed", "Shard 0 crashed", "ShardFailed"),
    (logs.HEALTHY_STARTUP, "unknown", None, "No known cause"),
]


def _evidence_has(diagnosis: Diagnosis, fragment: str) -> bool:
    return any(fragment in line for line in diagnosis.evidence)


@pytest.mark.parametrize(("log", "cause", "evidence", "title"), CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_each_rule_reads_its_real_log(log, cause, evidence, title):
    diagnosis = diagnose_text(log)
    assert diagnosis.cause == cause, diagnosis.evidence
    assert title in str(diagnosis.title)
    if evidence is not None:
        assert _evidence_has(diagnosis, evidence), diagnosis.evidence
    assert len(diagnosis.evidence) <= MAX_EVIDENCE
    assert not any("\x1b" in line for line in diagnosis.evidence)
    assert str(diagnosis.next_step)


def test_every_cause_has_a_real_log():
    # NCCL failures come only from public threads: tests/fixtures/tgi-logs/real (test_tgi_real_logs.py).
    assert {case[1] for case in CASES} | {"nccl"} == set(CAUSES)
    assert set(CAUSES) == {
        "cuda_oom", "warmup_memory", "kv_capacity", "shm", "host_oom_kill", "auth", "not_found", "incompatible",
        "invalid_arguments", "port_in_use", "image_missing", "gpu_runtime", "network", "binary_missing",
        "health_deadline", "crashed", "nccl", "unknown",
    }  # fmt: skip
    # Several rules may share a cause id, each with its own title and next step.
    assert len({str(rule.title) for rule in RULES}) == len(RULES)


def test_warmup_failure_wins_over_the_cuda_oom_in_its_own_traceback():
    diagnosis = diagnose_text(logs.WARMUP_OOM)
    assert diagnosis.cause == "warmup_memory"
    assert str(diagnosis.title) == "Not enough GPU memory to warm up with 4096 prefill tokens"
    # The router's coloured line, cleaned; the exit reasons are the coarse class.
    assert _evidence_has(diagnosis, "ERROR warmup{max_input_length=Some(4095) max_prefill_tokens=4096")
    assert _evidence_has(diagnosis, 'Error: Backend(Warmup(Generation("Not enough memory to handle 4096 prefill')
    assert "2024-12-11T18:27:01.533441Z ERROR text_generation_launcher: Webserver Crashed" in diagnosis.evidence
    assert diagnosis.evidence[-1] == "Error: WebserverFailed"
    assert not _evidence_has(diagnosis, "torch.OutOfMemoryError")


def test_order_of_lines_does_not_matter():
    """docker logs can show the stderr `Error:` lines before the ERROR lines that explain them."""
    lines = logs.WARMUP_OOM.splitlines()
    errors = [line for line in lines if line.startswith("Error:")]
    assert diagnose(errors + [line for line in lines if line not in errors]).cause == "warmup_memory"


def test_stderr_block_after_shard_complete_is_read_line_by_line():
    diagnosis = diagnose_text(logs.CUDA_OOM_LOADING)
    assert diagnosis.cause == "cuda_oom"
    assert str(diagnosis.title) == "The GPU ran out of memory while loading the model (tried to allocate 2.00 GiB)"
    oom = [line for line in diagnosis.evidence if line.startswith("torch.OutOfMemoryError")]
    assert oom[-1].endswith("#environment-variables) rank=0")
    assert "2024-12-11T18:26:36.303431Z ERROR text_generation_launcher: Shard 0 failed to start" in diagnosis.evidence
    assert diagnosis.evidence[-1] == "Error: ShardCannotStart"
    next_step = str(diagnosis.next_step)
    levers = ["--quantize", "--kv-cache-dtype fp8_e4m3fn", "--max-total-tokens", "--max-batch-prefill-tokens"]
    levers += ["--cuda-memory-fraction", "--num-shard", "expandable_segments:True", "CUDA_VISIBLE_DEVICES"]
    assert [lever for lever in levers if lever not in next_step] == []
    assert next_step.index("--quantize") < next_step.index("--kv-cache-dtype") < next_step.index("--cuda-memory")


def test_json_output_lines_are_reduced_to_their_message():
    lines = log_lines(logs.JSON_CUDA_OOM_LOADING.splitlines())
    assert lines[:3] == [
        "Starting shard",
        "Shard complete standard error output:",
        "Traceback (most recent call last):",
    ]
    diagnosis = diagnose_text(logs.JSON_PORT_IN_USE)
    assert diagnosis.evidence[0] == "Failed to bind to 0.0.0.0:8080: Address already in use (os error 98)"
    assert not _evidence_has(diagnosis, '"timestamp"')


def test_json_after_a_docker_timestamp_and_chunks_with_several_lines():
    stamped = "2024-12-11T18:37:03.011330123Z " + logs.JSON_PORT_IN_USE.splitlines()[1]
    assert diagnose([stamped]).cause == "port_in_use"
    assert diagnose([logs.SHM]).cause == "shm"  # one chunk holding many lines


def test_ansi_codes_are_stripped_before_matching():
    diagnosis = diagnose_text(logs.PORT_IN_USE)
    assert diagnosis.evidence[0] == (
        "2024-12-11T18:37:03.011330Z ERROR text_generation_router::server: router/src/server.rs:2329: "
        "Failed to bind to 0.0.0.0:80: Address already in use (os error 98)"
    )


def test_a_repo_that_is_not_found_is_not_called_gated():
    assert diagnose_text(logs.REPO_NOT_FOUND).cause == "not_found"
    gated = diagnose_text(logs.GATED)
    assert gated.cause == "auth"
    assert "Credentials" in str(gated.next_step) and "license" in str(gated.next_step)


def test_hub_client_blaming_the_connection_is_a_network_problem():
    line = (
        "huggingface_hub.errors.LocalEntryNotFoundError: An error happened while trying to locate the file on the Hub "
        "and we cannot find the requested files in the local cache. Please check your connection and try again or "
        "make sure your Internet connection is on."
    )
    assert diagnose([line]).cause == "network"


def test_retries_of_a_download_that_then_succeeded_are_not_the_cause():
    retried = logs.NETWORK.splitlines()[:5]
    succeeded = (
        "2024-12-11T18:38:59.425519Z  INFO download: text_generation_launcher: Successfully downloaded weights for x"
    )
    diagnosis = diagnose([*retried, succeeded, *logs.SHARD_CRASHED.splitlines()])
    assert (diagnosis.cause, str(diagnosis.title)) == ("crashed", "TGI stopped (ShardFailed)")


def test_context_from_the_container_runtime():
    killed = diagnose([], exit_code=137, context={"oom_killed": True})
    assert killed.cause == "host_oom_kill"
    assert killed.evidence == ["Container state: OOMKilled=true, exit code 137"]
    assert "memory limit" in str(killed.next_step) and "safetensors" in str(killed.next_step)

    image = diagnose(["Unable to find image locally"], context={"image_missing": True, "image": "tgi:9"})
    assert (image.cause, image.evidence) == ("image_missing", ["Docker: image not found (tgi:9)"])

    late = diagnose(logs.HEALTHY_STARTUP.splitlines()[:40], context={"deadline": "warming up"})
    assert late.cause == "health_deadline"
    assert str(late.title) == "TGI was not ready before the deadline (still warming up)"

    assert diagnose([], exit_code=137).cause == "unknown"


def test_a_healthy_log_has_no_cause():
    diagnosis = diagnose_text(logs.HEALTHY_STARTUP)
    assert (diagnosis.cause, diagnosis.evidence) == ("unknown", [])
    assert str(diagnose_text(logs.HEALTHY_STARTUP, exit_code=1).title) == "No known cause in the log (exit code 1)"
    assert diagnose([]).cause == "unknown"


def test_unknown_shows_the_last_error_lines():
    diagnosis = diagnose(["2024-12-11T19:00:00Z ERROR text_generation_launcher: something new", "Error: Foo(1)"])
    assert diagnosis.cause == "unknown"
    assert diagnosis.evidence == ["2024-12-11T19:00:00Z ERROR text_generation_launcher: something new", "Error: Foo(1)"]


def test_evidence_is_capped_and_keeps_the_exit_reason():
    retries = [f"2024-12-11T18:38:{i:02d}.0Z  INFO download: text_generation_launcher: Retry {i}/4" for i in range(30)]
    diagnosis = diagnose([*retries, "Error: DownloadError"])
    assert diagnosis.cause == "network"
    assert len(diagnosis.evidence) == MAX_EVIDENCE
    assert diagnosis.evidence[-1] == "Error: DownloadError"


def test_as_dict_is_plain_and_the_text_is_translated_lazily():
    diagnosis = diagnose_text(logs.WARMUP_OOM)
    data = diagnosis.as_dict()
    assert set(data) == {"cause", "title", "evidence", "next_step"}
    assert all(type(data[key]) is str for key in ("cause", "title", "next_step"))
    json.dumps(data)
    with translation.override("zh-hans"):
        title = str(diagnosis.title)
        assert "4096" in title and title != data["title"]
        assert diagnosis.as_dict()["next_step"] != data["next_step"]


# --- manage.py diagnose_log -----------------------------------------------------------------------------------


def _run(*args: str) -> str:
    out = io.StringIO()
    call_command("diagnose_log", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def warmup_log(tmp_path: Path) -> Path:
    path = tmp_path / "tgi.log"
    path.write_text(logs.WARMUP_OOM, encoding="utf-8")
    return path


def test_command_prints_cause_evidence_and_next_step(warmup_log):
    output = _run(str(warmup_log))
    assert output.startswith("warmup_memory: Not enough GPU memory to warm up with 4096 prefill tokens\n")
    assert "\nEvidence:\n  2024-12-11T18:27:01.410021Z ERROR text_generation_launcher: Method Warmup" in output
    assert "\n  RuntimeError: Not enough memory to handle 4096 prefill tokens" in output
    assert "\n  Error: WebserverFailed\n" in output
    assert "\nNext step:\n  The weights loaded" in output


def test_command_json(warmup_log):
    data = json.loads(_run(str(warmup_log), "--json"))
    assert data["cause"] == "warmup_memory"
    assert data["evidence"][-1] == "Error: WebserverFailed"
    assert "--max-batch-prefill-tokens" in data["next_step"]


def test_command_reads_standard_input(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(logs.GATED))
    assert json.loads(_run("-", "--json"))["cause"] == "auth"


def test_command_on_a_healthy_log(tmp_path):
    path = tmp_path / "ok.log"
    path.write_text(logs.HEALTHY_STARTUP)
    assert _run(str(path), "--exit-code", "0").startswith("unknown: No known cause in the log (exit code 0)")


def test_command_missing_file_is_status_2(tmp_path):
    with pytest.raises(CommandError, match="No such log file") as caught:
        call_command("diagnose_log", str(tmp_path / "nope.log"))
    assert caught.value.returncode == 2


def test_command_line_exit_status(tmp_path, warmup_log):
    manage = [sys.executable, str(ROOT / "manage.py"), "diagnose_log"]
    found = subprocess.run([*manage, str(warmup_log)], capture_output=True, text=True, cwd=ROOT, check=False)
    assert (found.returncode, found.stdout.split(":")[0]) == (0, "warmup_memory")
    missing = subprocess.run(
        [*manage, str(tmp_path / "nope.log")], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert missing.returncode == 2
    assert "No such log file" in missing.stderr


@pytest.mark.parametrize("log", [logs.KV_CAPACITY, logs.KV_CAPACITY_DISPLAY])
def test_a_cpu_deployment_gets_no_gpu_advice(log):
    """Issue 13 item 10: a CPU deployment short of KV capacity was told to check nvidia-smi and
    CUDA_VISIBLE_DEVICES. On CPU the next step speaks of RAM; on a GPU it still names the GPU levers."""
    on_cpu = diagnose(log.splitlines(), context={"device": "cpu"})
    on_gpu = diagnose(log.splitlines(), context={"device": "gpu"})
    assert on_cpu.cause == on_gpu.cause == "kv_capacity"
    cpu_step, gpu_step = str(on_cpu.next_step), str(on_gpu.next_step)
    for gpu_only in ("nvidia-smi", "CUDA_VISIBLE_DEVICES", "--cuda-memory-fraction", "GPU"):
        assert gpu_only not in cpu_step
    assert "RAM" in cpu_step and "--max-total-tokens" in cpu_step
    assert "nvidia-smi" in gpu_step
