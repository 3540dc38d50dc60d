# ruff: noqa: RUF001 (the Chinese the reader sees, with its full-width punctuation)
"""Sentences the benchmark work stores (a scheduled run's note, a re-run's note and applied suggestion, a schedule's
last error, why a re-run was given up) are kept in English whoever's request wrote them, and shown in the reader's
language on the pages and in the API (as issue 13 item 11 does for a deployment's placement)."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
from django.utils import translation

from deployments.benchmarks import schedules, texts, tuning
from deployments.models import BenchmarkRun, Deployment
from deployments.serving import approvals
from tests.deployments.benchmarks.test_schedules import WORKLOAD, target  # noqa: F401 (a fixture)
from tests.deployments.benchmarks.test_tuning import RULE, overloaded_run, running, tiny  # noqa: F401 (a fixture)
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db
ZH = {"HTTP_ACCEPT_LANGUAGE": "zh-hans"}
EN = {"HTTP_ACCEPT_LANGUAGE": "en"}


def page(client, url: str, headers: dict) -> str:
    return html.unescape(client.get(url, **headers).content.decode())


def test_a_scheduled_run_started_by_beat_reads_in_the_readers_language(client, api, engineer, target):  # noqa: F811
    schedule = schedules.schedule_create(actor=engineer, deployment=target, workload=WORKLOAD, interval_hours=24)
    assert schedules.schedules_due(now=schedule.next_run_at) == 1
    run = BenchmarkRun.objects.get()
    english = f"Scheduled run (schedule {schedule.pk})"
    chinese = f"定时运行（定时计划 {schedule.pk}）"
    assert run.note == english

    client.force_login(engineer)
    shown = page(client, f"/benchmarks/{run.pk}/", ZH)
    assert chinese in shown and english not in shown
    assert chinese in page(client, "/benchmarks/", ZH)
    assert english in page(client, f"/benchmarks/{run.pk}/", EN)
    assert api(engineer).get(f"/api/v1/benchmarks/{run.pk}/", **ZH).data["note"] == chinese
    assert api(engineer).get(f"/api/v1/benchmarks/{run.pk}/", **EN).data["note"] == english


def test_a_rerun_applied_from_a_chinese_request_is_stored_in_english_and_read_in_each_language(
    client,
    api,
    admin,
    tiny,  # noqa: F811
):
    deployment = running(tiny)
    run = overloaded_run(deployment, admin)
    body = api(admin).post(f"/api/v1/benchmarks/{run.pk}/apply/", {"rule": RULE}, expected=201, **ZH).data
    rerun = BenchmarkRun.objects.get(pk=body["id"])
    title_en = "Admit more requests at once (max_concurrent_requests 128 → 256)"
    title_zh = "同时接纳更多请求（max_concurrent_requests 128 → 256）"
    assert rerun.note == f"Re-run after: {title_en}" and rerun.suggestion["title"] == title_en
    deployment.refresh_from_db()
    assert deployment.spec.note == f"benchmark #{run.pk}: {title_en}"
    assert body["note"] == f"应用后重新运行：{title_zh}" and body["suggestion"]["title"] == title_zh

    client.force_login(admin)
    shown = page(client, f"/benchmarks/{rerun.pk}/", ZH)
    assert f"应用后重新运行：{title_zh}" in shown and title_en not in shown
    shown = page(client, f"/benchmarks/{rerun.pk}/", EN)
    assert f"Re-run after: {title_en}" in shown and "同时接纳" not in shown
    assert api(admin).get(f"/api/v1/benchmarks/{rerun.pk}/", **EN).data["suggestion"]["title"] == title_en


def test_a_schedules_last_error_is_stored_in_english_and_read_in_each_language(client, api, engineer, target):  # noqa: F811
    schedule = schedules.schedule_create(actor=engineer, deployment=target, workload=WORKLOAD, interval_hours=24)
    Deployment.objects.filter(pk=target.pk).update(state=Deployment.State.STOPPED)
    with translation.override("zh-hans"):  # a Chinese request's context: still stored in English
        assert schedules.schedules_due(now=schedule.next_run_at) == 0
    schedule.refresh_from_db()
    assert re.fullmatch(r"Skipped at [-\d: ]+: the deployment was stopped, not running\.", schedule.last_error)
    when = schedule.last_error.removeprefix("Skipped at ").split(": ")[0]
    chinese = f"已于 {when} 跳过：部署当时为已停止，未在运行。"

    client.force_login(engineer)
    shown = page(client, f"/deployments/{target.pk}/", ZH)
    assert chinese in shown and "not running" not in shown
    assert schedule.last_error in page(client, f"/deployments/{target.pk}/", EN)
    listed = api(engineer).get(f"/api/v1/benchmark-schedules/?deployment={target.pk}", **ZH).data
    assert [s["last_error"] for s in listed["results"]] == [chinese]
    listed = api(engineer).get(f"/api/v1/benchmark-schedules/?deployment={target.pk}", **EN).data
    assert [s["last_error"] for s in listed["results"]] == [schedule.last_error]


def test_a_given_up_reruns_reason_is_stored_in_english_and_read_in_each_language(client, api, admin, tiny):  # noqa: F811
    deployment = running(tiny, environment=Deployment.Environment.PRODUCTION)
    run = overloaded_run(deployment, admin)
    rerun_id = api(admin).post(f"/api/v1/benchmarks/{run.pk}/apply/", {"rule": RULE}, expected=202, **ZH).data["id"]
    rerun = BenchmarkRun.objects.get(pk=rerun_id)
    approvals.reject(actor=UserFactory(roles=["admin"]), request=rerun.approval, comment="not during the sale")
    with translation.override("zh-hans"):
        assert tuning.reruns_due() == 0
    rerun.refresh_from_db()
    english = f"Approval request #{rerun.approval_id} was rejected: not during the sale"
    chinese = f"审批请求 #{rerun.approval_id} 被拒绝：not during the sale"
    assert rerun.failure_detail == english

    client.force_login(admin)
    shown = page(client, f"/benchmarks/{rerun.pk}/", ZH)
    assert chinese in shown and "was rejected" not in shown
    assert english in page(client, f"/benchmarks/{rerun.pk}/", EN)
    assert api(admin).get(f"/api/v1/benchmarks/{rerun.pk}/", **ZH).data["failure_detail"] == chinese
    assert api(admin).get(f"/api/v1/benchmarks/{rerun.pk}/", **EN).data["failure_detail"] == english


def test_every_title_the_suggestions_build_is_one_the_display_knows():
    """A title sentence changed in suggestions.py and not in texts.TITLES would show in English to everyone."""
    source = Path(tuning.__file__).with_name("suggestions.py").read_text(encoding="utf-8")
    built = set(re.findall(r'title=_\(\s*"((?:[^"\\]|\\.)*)"', source))
    assert built == set(texts.TITLES)


def test_a_users_own_note_and_an_unknown_sentence_show_as_written():
    with translation.override("zh-hans"):
        assert texts.run_note_display("nightly on the big box") == "nightly on the big box"
        assert texts.schedule_error_display("Skipped for reasons") == "Skipped for reasons"
        assert texts.suggestion_title_display("Shard over 4 GPUs (num_shard 2 → 8)") == (
            "Shard over 4 GPUs (num_shard 2 → 8)"
        )  # the two "new" must agree
        assert texts.suggestion_title_display("Shard over 4 GPUs (num_shard 2 → 4)").startswith("分片到 4 块 GPU")
