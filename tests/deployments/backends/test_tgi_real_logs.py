"""TGI failure diagnosis on logs nobody here wrote: every log of tests/fixtures/tgi-logs/real (each from a public
issue thread named in its index.json) gets the cause a person reading it sees, every log rule reads at least one of
them, no rule fires on the healthy starts, and the corpus score per cause and overall is printed with the run, once
for the whole corpus and once for the held-out logs (collected after the rules were written)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from deployments.backends.diagnosis import MAX_EVIDENCE, log_lines
from deployments.backends.tgi.diagnosis import CAUSES, RULES, diagnose_text
from tests.support.fixtures import FIXTURES

CORPUS = FIXTURES / "tgi-logs" / "real"
INDEX = json.loads((CORPUS / "index.json").read_text(encoding="utf-8"))
FAILURES = [entry for entry in INDEX if not entry.get("healthy")]
HEALTHY = [entry for entry in INDEX if entry.get("healthy")]
# Logs collected after the rules were written, their expected cause recorded before they were scored: the score
# on them measures the rules, where the rest only shows the rules still read the logs they were written from.
HELD_OUT = [entry for entry in FAILURES if entry.get("held_out")]
# Rules that read facts from the container runtime or the console rather than TGI's own lines.
CONTEXT_CAUSES = {"image_missing", "host_oom_kill", "health_deadline"}
# Rules whose failures were not found in a public TGI thread's paste; tests/support/tgi_logs.py has their lines.
NOT_IN_PUBLIC_THREADS = {"binary_missing", "kv_capacity"}


def _log(entry: dict) -> str:
    return (CORPUS / entry["file"]).read_text(encoding="utf-8")


def _ids(entries: list[dict]) -> list[str]:
    return [entry["file"].removesuffix(".log") for entry in entries]


def test_the_corpus_is_big_varied_and_sourced():
    assert len(FAILURES) >= 40
    assert len({entry["expected_cause"] for entry in FAILURES}) >= 10
    for entry in INDEX:
        assert entry["source"].startswith("https://github.com/"), entry
        assert entry["note"], entry
        assert entry["expected_cause"] in CAUSES, entry
        assert not entry.get("healthy") or entry["expected_cause"] == "unknown", entry
    listed = [entry["file"] for entry in INDEX]
    assert sorted(listed) == sorted(path.name for path in CORPUS.glob("*.log")), "every log in the index, once"


def test_the_held_out_set_comes_from_other_threads():
    assert len(HELD_OUT) >= 15
    assert len({entry["expected_cause"] for entry in HELD_OUT}) >= 8
    # A thread the rules were written from would make the held-out score a measure of memory, not of the rules.
    seen = {entry["source"] for entry in FAILURES if not entry.get("held_out")}
    assert not [entry["file"] for entry in HELD_OUT if entry["source"] in seen]


@pytest.mark.parametrize("entry", FAILURES, ids=_ids(FAILURES))
def test_each_real_failure_log_gets_its_cause(entry):
    diagnosis = diagnose_text(_log(entry))
    assert diagnosis.cause == entry["expected_cause"], diagnosis.evidence
    assert entry["title_has"] in str(diagnosis.title)
    assert diagnosis.evidence and len(diagnosis.evidence) <= MAX_EVIDENCE
    # The evidence is the log's own lines (escape codes removed), so an admin sees where the diagnosis came from.
    plain = log_lines(_log(entry).splitlines())
    assert all(line in plain for line in diagnosis.evidence)
    assert not any("\x1b" in line or "#033[" in line for line in diagnosis.evidence)
    assert str(diagnosis.next_step)


def test_every_log_rule_reads_at_least_one_real_log():
    fired = set()
    for entry in FAILURES:
        lines = log_lines(_log(entry).splitlines())
        fired.add(id(next((rule for rule in RULES if rule.evidence(lines, {}, None)), None)))
    skipped = CONTEXT_CAUSES | NOT_IN_PUBLIC_THREADS
    unread = [str(rule.title) for rule in RULES if rule.cause not in skipped and id(rule) not in fired]
    assert not unread, unread


def _score(name: str, entries: list[dict], capsys) -> None:
    """Print the score per cause and overall, then hold it to 90 % right and under 5 % unknown."""
    results = [(entry, diagnose_text(_log(entry)).cause) for entry in entries]
    total = len(results)
    right = sum(cause == entry["expected_cause"] for entry, cause in results)
    unknown = sum(cause == "unknown" for _, cause in results)
    per_cause = Counter(entry["expected_cause"] for entry, _ in results)
    per_cause_right = Counter(entry["expected_cause"] for entry, cause in results if cause == entry["expected_cause"])
    lines = [
        f"{name}: {right}/{total} right ({100 * right / total:.1f} %), "
        f"unknown {unknown}/{total} ({100 * unknown / total:.1f} %), healthy starts {len(HEALTHY)}",
        *(f"  {cause}: {per_cause_right[cause]}/{count}" for cause, count in sorted(per_cause.items())),
    ]
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    wrong = [
        (entry["file"], entry["expected_cause"], cause) for entry, cause in results if cause != entry["expected_cause"]
    ]
    assert right / total >= 0.9, (lines[0], wrong)
    assert unknown / total < 0.05, (lines[0], wrong)


def test_failure_corpus_score(capsys):
    _score("TGI failure corpus", FAILURES, capsys)


def test_held_out_score(capsys):
    _score("TGI held-out failures", HELD_OUT, capsys)


@pytest.mark.parametrize("entry", HEALTHY, ids=_ids(HEALTHY))
def test_no_rule_fires_on_a_healthy_start(entry):
    diagnosis = diagnose_text(_log(entry))
    assert diagnosis.cause == "unknown", diagnosis.evidence
    assert diagnosis.evidence == []  # no ERROR lines to show either


def test_all_healthy_starts_together_name_no_failure():
    assert diagnose_text("\n".join(_log(entry) for entry in HEALTHY)).cause == "unknown"


def test_the_quantization_rule_wins_over_the_missing_weight_rule():
    # "weight gptq_bits does not exist" is also a missing weight; the quantization next step is the one that helps.
    diagnosis = diagnose_text((CORPUS / "728-gptq-bits-missing.log").read_text(encoding="utf-8"))
    assert "`--quantize`" in str(diagnosis.next_step)
    assert "quantization" in str(diagnosis.title)
    plain = diagnose_text((CORPUS / "2270-lm-head-missing.log").read_text(encoding="utf-8"))
    assert str(plain.title) == "The checkpoint has no weight lm_head.weight"
    assert "LoRA adapter" in str(plain.next_step)


def test_a_cuda_error_seen_through_the_nccl_watchdog_is_a_crash_not_an_nccl_setup_problem():
    # The watchdog's frames name ProcessGroupNCCL, but the shard died of a CUDA error while serving.
    for name in ("2593-cuda-error-nccl-watchdog.log", "3301-shard-crash-watchdog-frames.log"):
        assert diagnose_text((CORPUS / name).read_text(encoding="utf-8")).cause == "crashed"
    timeout = diagnose_text((CORPUS / "1383-nccl-watchdog-timeout.log").read_text(encoding="utf-8"))
    assert timeout.cause == "nccl" and "NCCL_P2P_DISABLE=1" in str(timeout.next_step)


def test_cloudwatch_escape_text_is_stripped_like_escape_codes():
    diagnosis = diagnose_text((CORPUS / "optimum-neuron-516-router-panic.log").read_text(encoding="utf-8"))
    assert "2024-03-18T18:17:46.703406Z ERROR text_generation_launcher: Webserver Crashed" in diagnosis.evidence
