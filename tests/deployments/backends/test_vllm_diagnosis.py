"""Failure diagnosis of vLLM logs: every real failure log of tests/fixtures/vllm-failures (each from a public issue
thread named in its index.json) gets the cause it shows, every rule reads at least one of them, and the corpus as a
whole is diagnosed well enough for an admin to trust it (the score is printed with the test run)."""

from __future__ import annotations

import json

import pytest
from django.utils import translation

from deployments.backends.diagnosis import MAX_EVIDENCE, log_lines
from deployments.backends.tgi.diagnosis import CAUSES as TGI_CAUSES
from deployments.backends.vllm.diagnosis import BOOK, CAUSES, RULES, diagnose, diagnose_text
from deployments.backends.vllm.launch import RELEASE
from tests.conftest import need
from tests.support.fixtures import FIXTURES
from tests.support.serve_process import make_model, ml_python
from tests.support.vllm_process import VllmProcess

CORPUS = FIXTURES / "vllm-failures"
INDEX = json.loads((CORPUS / "index.json").read_text(encoding="utf-8"))
FAILURES = [entry for entry in INDEX if not entry.get("healthy")]
HEALTHY = [entry for entry in INDEX if entry.get("healthy")]
# Rules that read facts from the container runtime or the console rather than vLLM's own lines.
CONTEXT_CAUSES = {"image_missing", "host_oom_kill", "health_deadline"}


def _log(entry: dict) -> str:
    return (CORPUS / entry["file"]).read_text(encoding="utf-8")


def _rule_that_fires(text: str):
    """The first rule with evidence in the log: the one diagnose() reports."""
    lines = log_lines(text.splitlines())
    return next((rule for rule in RULES if rule.evidence(lines, {}, None)), None)


def test_the_corpus_is_big_varied_and_sourced():
    assert len(FAILURES) >= 24
    assert len({entry["expected_cause"] for entry in FAILURES}) >= 10
    for entry in INDEX:
        assert (CORPUS / entry["file"]).is_file(), entry["file"]
        assert entry["source"].startswith("https://github.com/"), entry
        assert entry["expected_cause"] in (*CAUSES, "unknown"), entry
    listed = {entry["file"] for entry in INDEX}
    assert listed == {path.name for path in CORPUS.glob("*.log")}, "every log is in the index and only once"


@pytest.mark.parametrize("entry", FAILURES, ids=[entry["file"].removesuffix(".log") for entry in FAILURES])
def test_each_real_failure_log_gets_its_cause(entry):
    diagnosis = diagnose_text(_log(entry))
    assert diagnosis.cause == entry["expected_cause"], diagnosis.evidence
    assert entry["title_has"] in str(diagnosis.title)
    assert diagnosis.evidence and len(diagnosis.evidence) <= MAX_EVIDENCE
    # The evidence is the log's own lines, so an admin sees where the diagnosis came from.
    plain = log_lines(_log(entry).splitlines())
    assert all(line in plain for line in diagnosis.evidence)
    assert str(diagnosis.next_step)


def test_every_log_rule_reads_at_least_one_real_log():
    fired = {id(_rule_that_fires(_log(entry))) for entry in FAILURES}
    unread = [rule.title for rule in RULES if rule.cause not in CONTEXT_CAUSES and id(rule) not in fired]
    assert not unread, unread


def test_failure_corpus_accuracy(capsys):
    results = [(entry, diagnose_text(_log(entry)).cause) for entry in FAILURES]
    total = len(results)
    right = sum(cause == entry["expected_cause"] for entry, cause in results)
    unknown = sum(cause == "unknown" for _, cause in results)
    report = (
        f"vLLM failure corpus: {right}/{total} right ({100 * right / total:.1f} %), "
        f"unknown {unknown}/{total} ({100 * unknown / total:.1f} %)"
    )
    with capsys.disabled():
        print(f"\n{report}")
    wrong = [
        (entry["file"], entry["expected_cause"], cause) for entry, cause in results if cause != entry["expected_cause"]
    ]
    assert right / total >= 0.9, (report, wrong)
    assert unknown / total < 0.1, (report, wrong)


@pytest.mark.parametrize("entry", HEALTHY, ids=[entry["file"].removesuffix(".log") for entry in HEALTHY])
def test_a_healthy_vllm_log_names_no_failure(entry):
    diagnosis = diagnose_text(_log(entry))
    assert diagnosis.cause == "unknown", diagnosis.evidence
    assert diagnosis.evidence == []  # no ERROR lines to show either


def test_all_healthy_startup_lines_together_name_no_failure():
    whole = "\n".join(_log(entry) for entry in HEALTHY)
    assert diagnose_text(whole).cause == "unknown"


def test_the_specific_root_cause_wins_over_the_engine_failure_that_follows_it():
    # vLLM ends a failed start with "Engine core initialization failed"; the cause is the traceback before it.
    tail = _log(next(entry for entry in FAILURES if entry["expected_cause"] == "crashed"))
    for name in ("max-seq-len-v1-gpt-oss-120b-h100.log", "libcuda-missing-torch-compile.log"):
        first = (CORPUS / name).read_text(encoding="utf-8")
        alone = diagnose_text(first).cause
        assert diagnose_text(first + "\n" + tail).cause == alone != "crashed"


def test_shared_memory_wins_over_the_nccl_error_it_causes():
    text = (CORPUS / "nccl-shm-segment-8gpu-distbackend.log").read_text(encoding="utf-8")
    assert "NCCL error" in text
    assert diagnose_text(text).cause == "shm"


def test_a_full_kv_cache_is_not_mistaken_for_a_gpu_with_zero_blocks():
    # "# GPU blocks: 1478" is capacity too small for max_model_len, not "no memory for the cache blocks".
    diagnosis = diagnose_text((CORPUS / "max-seq-len-over-kv-cache-llama31-8b-rtx3090.log").read_text(encoding="utf-8"))
    assert str(diagnosis.title) == "The KV cache cannot hold one request of max_model_len=29000"
    assert any("Maximum concurrency for 29000 tokens per request" in line for line in diagnosis.evidence)


def test_a_missing_lora_adapter_wins_over_the_hub_error_and_the_engine_failure_around_it():
    # vLLM first tries a path that is not a directory as a Hub repo id and logs the Hub client's error (read alone,
    # the generic "model not found"), then fails the adapter, then the engine: the adapter is the cause.
    hub = [
        "(EngineCore_DP0 pid=862129) ERROR 01-22 17:44:05 [utils.py:258] Error downloading the HuggingFace model",
        "(EngineCore_DP0 pid=862129) ERROR 01-22 17:44:05 [utils.py:258] huggingface_hub.errors.HFValidationError: "
        "Repo id must be in the form 'repo_name' or 'namespace/repo_name': '/data/adapters/gone'.",
    ]
    assert diagnose(hub).cause == "not_found" and "LoRA" not in str(diagnose(hub).title)
    adapter = (CORPUS / "lora-no-adapter-found-placeholder-path-qerl.log").read_text(encoding="utf-8")
    tail = _log(next(entry for entry in FAILURES if entry["expected_cause"] == "crashed"))
    diagnosis = diagnose_text("\n".join(hub) + "\n" + adapter + "\n" + tail)
    assert diagnosis.cause == "not_found"
    assert str(diagnosis.title) == "LoRA adapter 1748373774 was not found at simon_lora_path"
    assert hub[0] in diagnosis.evidence  # what vLLM tried first, shown with the adapter's line


def test_an_argument_vllm_does_not_know_names_the_release_the_console_builds_for():
    diagnosis = diagnose_text((CORPUS / "unrecognized-args-lora-path-v073.log").read_text(encoding="utf-8"))
    assert str(diagnosis.title) == "This vLLM does not know the argument --lora-path"
    step = str(diagnosis.next_step)
    assert f"vLLM {RELEASE}" in step and f"vllm/vllm-openai:v{RELEASE}" in step and "vllm.json" in step


def test_the_stand_ins_own_refusals_are_diagnosed(tmp_path):
    """The development server (workers/jobs/vllm_serve.py) prints vLLM's lines for an unknown flag and a missing
    adapter; run as a real process, its output gets the same diagnosis a real vLLM's would."""
    need(ml_python() is not None, "the ML environment (make ml-env) is needed to run vllm_serve.py")
    model = make_model(tmp_path / "tiny")
    missing = tmp_path / "adapters" / "gone"
    flag = VllmProcess(model, "--max-total-tokens", "256").start()  # TGI's flag, not vLLM's
    adapter = VllmProcess(model, "--enable-lora", "--lora-modules", f"support={missing}").start()
    try:
        assert flag.wait_exit() == 2, flag.output
        assert adapter.wait_exit() == 1, adapter.output
    finally:
        flag.stop()
        adapter.stop()

    refused = diagnose(flag.lines, exit_code=2)
    assert refused.cause == "invalid_arguments"
    assert str(refused.title) == "This vLLM does not know the argument --max-total-tokens"
    assert refused.evidence == ["vllm serve: error: unrecognized arguments: --max-total-tokens 256"]

    gone = diagnose(adapter.lines, exit_code=1)
    assert gone.cause == "not_found"
    assert str(gone.title) == f"LoRA adapter support was not found at {missing}"
    assert f"ValueError: Loading lora support failed: No adapter found for {missing}" in gone.evidence
    assert "“LoRA adapters”" in str(gone.next_step)


@pytest.mark.parametrize(
    ("context", "exit_code", "cause", "evidence"),
    [
        (
            {"image_missing": True, "image": "vllm/vllm-openai@sha256:0000"},
            125,
            "image_missing",
            "Docker: image not found (vllm/vllm-openai@sha256:0000)",
        ),
        ({"oom_killed": True}, 137, "host_oom_kill", "Container state: OOMKilled=true, exit code 137"),
        ({"deadline": "loading the model"}, None, "health_deadline", "Deadline passed while loading the model"),
    ],
)
def test_facts_from_the_runtime_and_the_console(context, exit_code, cause, evidence):
    healthy = _log(HEALTHY[0])
    diagnosis = diagnose(healthy.splitlines(), exit_code=exit_code, context=context)
    assert diagnosis.cause == cause
    assert diagnosis.evidence[0] == evidence


def test_unknown_names_the_exit_code_and_shows_the_last_errors():
    lines = ["INFO 07-07 20:12:44 api_server.py:1] vLLM API server version 0.9.2", "ERROR 07-07 20:12:45 x.py:1] boom"]
    diagnosis = diagnose(lines, exit_code=3)
    assert diagnosis.cause == "unknown"
    assert "code 3" in str(diagnosis.title)
    assert diagnosis.evidence == ["ERROR 07-07 20:12:45 x.py:1] boom"]


def test_cause_ids_are_tgis_where_the_cause_is_the_same_thing():
    shared = {"image_missing", "gpu_runtime", "port_in_use", "not_found", "auth", "network", "kv_capacity"}
    shared |= {"invalid_arguments", "incompatible", "cuda_oom", "shm", "host_oom_kill", "health_deadline", "crashed"}
    shared.add("unknown")
    assert shared <= set(TGI_CAUSES)
    assert set(CAUSES) - shared == {"gpu_memory_in_use", "nccl"}
    assert CAUSES[-1] == "unknown" and len(CAUSES) == len(set(CAUSES))
    assert BOOK.rules is RULES


def test_next_steps_name_the_console_fields_to_change():
    steps = {rule.title: str(rule.next_step) for rule in RULES}
    assert "“Max model length” (`max_model_len`)" in steps["The KV cache cannot hold one request of the maximum length"]
    assert "“GPU memory utilization”" in steps["Other processes hold memory on the GPU vLLM wants"]
    assert "“GPUs (num_shard)”" in steps["The attention heads cannot be split evenly across the GPUs"]
    assert "“dtype” to float16" in steps["This GPU has no bfloat16"]
    assert "“LoRA adapters”" in steps["A LoRA adapter was not found"]
    assert "“Max batched tokens” (`max_num_batched_tokens`)" in steps["No GPU memory is left for the KV cache"]


def test_titles_and_next_steps_are_translated_lazily():
    diagnosis = diagnose_text((CORPUS / "bf16-on-turing-quadro-rtx6000-nim.log").read_text(encoding="utf-8"))
    with translation.override("en"):
        assert str(diagnosis.title) == "bfloat16 needs compute capability 8.0; the Quadro RTX 6000 has 7.5"
    plain = diagnosis.as_dict()
    assert plain["cause"] == "incompatible" and isinstance(plain["next_step"], str)
