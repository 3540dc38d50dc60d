"""Issue 17, the benchmark pages: the list (what the user may see, filters, search, an empty state that says what
to do), the start form (a preset per deployment, the generator's refusals at their field, 403 without
use_deployment), a run's page (every figure per step, a step with errors flagged, exports, cancel, suggestions
whose Apply shows only with deploy) and the compare page (deltas and a verdict per figure against the first run)."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from console import roles
from console.accounts.services.access import object_grant
from deployments.benchmarks import services
from deployments.benchmarks.presets import preset_for
from deployments.benchmarks.workload import check_workload
from deployments.models import BenchmarkAlert, BenchmarkRun, Dataset, DatasetVersion, Deployment, DeploymentSpec
from tests.factories import DeploymentSpecFactory, HostFactory, TeamFactory
from tests.support.bench_events import generator_lines
from workers.handlers.benchmark import process_lines

pytestmark = pytest.mark.django_db
WORKLOAD = {"prompt_tokens": 32, "output_tokens": 16, "sweep": "concurrency", "levels": [1, 4], "duration_s": 5}


@pytest.fixture
def target(admin, engineer):
    """A running TGI deployment on the CPU (the planner checks nothing there) that the engineer may use."""
    spec = DeploymentSpecFactory(
        current=True, deployment__name="page-target", device="cpu", max_input_tokens=512, max_total_tokens=1024
    )
    deployment = spec.deployment
    deployment.state, deployment.host = Deployment.State.RUNNING, HostFactory(name="page-host")
    deployment.save(update_fields=["state", "host"])
    object_grant(actor=admin, grantee=engineer, action=roles.USE_DEPLOYMENT, target=deployment)
    return deployment


def finished_run(deployment, actor, steps: list[dict], *, note: str = "", workload=WORKLOAD) -> BenchmarkRun:
    run = BenchmarkRun.objects.create(
        deployment=deployment,
        spec=deployment.spec,
        created_by=actor,
        workload=check_workload(workload),
        state=BenchmarkRun.State.SUCCEEDED,
        note=note,
    )
    assert process_lines(run, generator_lines(steps)) == len(steps)
    return run


CLEAN = [{"c": 1, "n": 4, "ttft": 20, "gap": 10}, {"c": 4, "n": 8, "ttft": 30, "gap": 12}]
WITH_ERRORS = [{"c": 1, "n": 4, "ttft": 20, "gap": 10}, {"c": 4, "n": 6, "ttft": 40, "gap": 15, "failed": 2}]


def html(response) -> str:
    return response.content.decode()


# --- list ----------------------------------------------------------------------------------------------------


def test_the_list_shows_visible_runs_filters_searches_and_says_what_to_do_when_empty(client, engineer, target):
    client.force_login(engineer)
    empty = html(client.get(reverse("benchmarks:list")))
    assert 'id="benchmarks-empty"' in empty and "Start one against a running deployment" in empty
    assert 'id="benchmark-new"' in empty  # the engineer may use the target

    other = DeploymentSpecFactory(current=True, deployment__name="other-target").deployment
    first = finished_run(target, engineer, CLEAN, note="baseline at v1")
    second = finished_run(other, engineer, CLEAN)
    second.state = BenchmarkRun.State.FAILED
    second.save(update_fields=["state"])

    def listed(**query) -> list[int]:
        page = html(client.get(reverse("benchmarks:list"), query))
        return [int(pk) for pk in re.findall(r'<tr data-run="(\d+)"', page)]

    assert listed() == [second.pk, first.pk]
    assert listed(deployment=target.pk) == [first.pk]
    assert listed(state="failed") == [second.pk]
    assert listed(q="baseline") == [first.pk] and listed(q=f"#{second.pk}") == [second.pk]
    assert listed(q="other-target") == [second.pk]
    page = html(client.get(reverse("benchmarks:list"), {"state": "cancelled"}))
    assert "No benchmark matches these filters." in page
    # Every row can be ticked for the compare page.
    page = html(client.get(reverse("benchmarks:list")))
    assert f'name="runs" value="{first.pk}"' in page and reverse("benchmarks:compare") in page
    assert "concurrency 1, 4 · 32 → 16 tokens · 5 s per step" in page


def test_who_opens_the_list_and_sees_the_menu_entry(client, auditor, nobody):
    assert client.get(reverse("benchmarks:list")).status_code == 302  # to the login
    client.force_login(nobody)
    assert client.get(reverse("benchmarks:list")).status_code == 403
    assert 'data-nav="benchmarks"' not in html(client.get(reverse("dashboard")))
    client.force_login(auditor)
    page = html(client.get(reverse("benchmarks:list")))
    assert 'data-nav="benchmarks"' in page
    assert 'id="benchmark-new"' not in page and "Benchmarks are started by people who may use a deployment." in page


# --- start form ----------------------------------------------------------------------------------------------


def test_the_preset_follows_the_deployments_spec():
    tgi = DeploymentSpec(backend="tgi", max_input_tokens=2048, max_total_tokens=4096, max_concurrent_requests=20)
    preset = preset_for(Deployment(spec=tgi))
    assert preset["dialect"] == "tgi-generate-stream" and preset["prompt_tokens"] == 512
    assert preset["output_tokens"] == 128 and preset["levels"] == [1, 4, 16, 20]
    long = DeploymentSpec(backend="vllm", max_model_len=32768, max_concurrent_requests=128)
    preset = preset_for(Deployment(spec=long))
    assert preset["dialect"] == "openai-completion" and preset["prompt_tokens"] == 1024  # capped
    assert preset["levels"] == [1, 4, 16, 64] and preset["sampling"]["ignore_eos"] is True
    short = DeploymentSpec(backend="tgi", device="cpu", max_input_tokens=128, max_total_tokens=256)
    preset = preset_for(Deployment(spec=short))
    assert preset["prompt_tokens"] == 32 and preset["output_tokens"] == 32 and preset["levels"] == [1, 2, 4]
    check_workload(preset)  # every preset is a workload the generator takes


def test_the_form_offers_the_preset_shows_errors_at_their_field_and_starts_the_run(client, engineer, target):
    client.force_login(engineer)
    page = html(client.get(reverse("benchmarks:start"), {"deployment": target.pk}))
    assert f'<option value="{target.pk}" selected>' in page
    assert 'name="prompt_tokens" value="128"' in page and 'name="levels" value="1, 2, 4"' in page
    assert 'value="tgi-generate-stream" selected' in page

    # "Use preset" fills the form for the chosen deployment and keeps the note.
    page = html(client.post(reverse("benchmarks:start"), {"deployment": target.pk, "preset": "1", "note": "hi"}))
    assert 'name="prompt_tokens" value="128"' in page and 'name="note" value="hi"' in page

    form = {"deployment": target.pk, "dialect": "openai-chat", "prompt_tokens": "32", "output_tokens": "16",
            "sweep": "concurrency", "levels": "1, 0", "duration_s": "5", "seed": "0"}  # fmt: skip
    refused = client.post(reverse("benchmarks:start"), form)
    assert refused.status_code == 400 and 'data-field-error="levels"' in html(refused)
    refused = client.post(reverse("benchmarks:start"), {**form, "levels": "1, 4", "duration_s": ""})
    assert refused.status_code == 400 and 'data-field-error="duration_s"' in html(refused)
    refused = client.post(reverse("benchmarks:start"), {**form, "levels": "1", "output_tokens": "{long"})
    assert refused.status_code == 400 and 'data-field-error="output_tokens"' in html(refused)
    refused = client.post(reverse("benchmarks:start"), {**form, "levels": "1", "top_p": "7"})
    assert refused.status_code == 400 and 'data-field-error="top_p"' in html(refused)
    assert not BenchmarkRun.objects.exists()

    started = client.post(reverse("benchmarks:start"), {**form, "levels": "1, 4", "temperature": "0.5"})
    run = BenchmarkRun.objects.get()
    assert started.status_code == 302 and started["Location"] == reverse("benchmarks:detail", args=[run.pk])
    assert run.workload["levels"] == [1, 4] and run.workload["sampling"] == {"temperature": 0.5}
    assert run.created_by == engineer and run.job is not None


def test_prompt_lengths_can_follow_a_dataset_versions_statistics(client, admin, engineer, target):
    """Only the version's histogram (counts per length bin) goes into the workload, never a row; a team's dataset
    is offered to its members (and admins), not to an engineer outside it."""
    team = TeamFactory(name="bench-team")
    dataset = Dataset.objects.create(name="chats", team=team)
    lengths = {"tokenizer": "org/tiny", "min": 3, "max": 900, "p50": 120, "bins": [0, 64, 256, 1024],
               "counts": [10, 70, 20]}  # fmt: skip
    version = DatasetVersion.objects.create(dataset=dataset, version=2, sha256="0" * 64, size=10, format="jsonl",
                                            path="x", stats={"rows": 100, "token_lengths": lengths})  # fmt: skip
    DatasetVersion.objects.create(dataset=dataset, version=1, sha256="1" * 64, size=10, format="jsonl", path="y")
    client.force_login(engineer)
    assert "chats v2" not in html(client.get(reverse("benchmarks:start")))
    client.force_login(admin)
    page = html(client.get(reverse("benchmarks:start")))
    assert f'<option value="{version.pk}">chats v2 (org/tiny)</option>' in page and "chats v1" not in page
    form = {"deployment": target.pk, "dialect": "openai-chat", "prompt_dataset": version.pk, "output_tokens": "16",
            "sweep": "concurrency", "levels": "1", "duration_s": "5", "seed": "0"}  # fmt: skip
    assert client.post(reverse("benchmarks:start"), form).status_code == 302
    histogram = BenchmarkRun.objects.get().workload["prompt_tokens"]
    assert histogram == {"histogram": {"bins": [0, 64, 256, 1024], "counts": [10, 70, 20]}}
    missing = client.post(reverse("benchmarks:start"), {**form, "prompt_dataset": ""})
    assert missing.status_code == 400 and 'data-field-error="prompt_tokens"' in html(missing)


def test_the_form_is_for_those_who_may_use_a_deployment(client, engineer, auditor, admin, target):
    client.force_login(auditor)
    assert client.get(reverse("benchmarks:start")).status_code == 403
    assert client.post(reverse("benchmarks:start"), {"deployment": target.pk}).status_code == 403
    # An engineer without the grant may see the deployment but not pick it.
    stranger = DeploymentSpecFactory(current=True, deployment__name="not-granted").deployment
    Deployment.objects.filter(pk=stranger.pk).update(state=Deployment.State.RUNNING, host=target.host)
    client.force_login(engineer)
    page = html(client.get(reverse("benchmarks:start")))
    assert "page-target" in page and "not-granted" not in page
    refused = client.post(reverse("benchmarks:start"), {"deployment": stranger.pk, "preset": "1", "note": "n"})
    assert refused.status_code == 400 and "Choose a running deployment you may use" in html(refused)
    assert 'name="note" value="n"' in html(refused) and not BenchmarkRun.objects.exists()


# --- a run's page --------------------------------------------------------------------------------------------


def test_the_run_page_shows_every_figure_and_flags_the_step_with_errors(client, engineer, auditor, target):
    run = finished_run(target, engineer, WITH_ERRORS)
    client.force_login(auditor)
    page = html(client.get(reverse("benchmarks:detail", args=[run.pk])))
    rows = re.findall(r'<tr data-step="(\d)" data-has-errors="(\d)"', page)
    assert rows == [("0", "0"), ("1", "1")]
    flagged = page[page.index('<tr data-step="1"') :]
    flagged = flagged[: flagged.index("</tr>")]
    assert "data-errors-flag" in flagged and "http_503: 2" in flagged and 'class="table-danger"' in flagged
    assert '<td data-figure="ttft_ms_p50">40</td>' in flagged  # of the successful streams, not averaged
    assert '<td data-figure="requests_failed">2</td>' in flagged
    clean = page[page.index('<tr data-step="0"') :]
    assert '<td data-figure="itl_ms_p50">10</td>' in clean[: clean.index("</tr>")]
    assert reverse("api:benchmark-export-csv", args=[run.pk]) in page
    assert reverse("api:benchmark-export-json", args=[run.pk]) in page
    exported = client.get(reverse("api:benchmark-export-csv", args=[run.pk]))  # the page's session is enough
    assert exported.status_code == 200 and exported["Content-Type"].startswith("text/csv")
    assert 'id="bench-runs"' in page and 'data-chart="curve"' in page and 'data-chart="ttft"' in page
    assert 'id="benchmark-cancel-form"' not in page  # finished; and an auditor may not cancel


def test_cancel_is_offered_to_those_who_may_use_the_deployment(client, engineer, auditor, target):
    run = services.benchmark_start(actor=engineer, deployment=target, workload=WORKLOAD)
    client.force_login(auditor)
    assert 'id="benchmark-cancel-form"' not in html(client.get(reverse("benchmarks:detail", args=[run.pk])))
    assert client.post(reverse("benchmarks:cancel", args=[run.pk])).status_code == 403
    client.force_login(engineer)
    page = html(client.get(reverse("benchmarks:detail", args=[run.pk])))
    assert 'id="benchmark-cancel-form"' in page and "data-confirm=" in page and 'id="job-live"' in page
    # The generator reports the steps finished: "0 of 2 steps done" while the first runs, not "step 0 of 2".
    assert 'data-step-text="{step} of {total} steps done"' in page
    assert client.post(reverse("benchmarks:cancel", args=[run.pk])).status_code == 302
    run.job.refresh_from_db()
    assert run.job.cancel_requested


OVERLOADED = [{"c": 64, "n": 8, "ttft": 30, "gap": 12}, {"c": 256, "n": 6, "ttft": 40, "gap": 15, "failed": 3,
                                                          "error": "http_429"}]  # fmt: skip
BIG = {**WORKLOAD, "levels": [64, 256]}


def test_apply_shows_only_with_deploy_and_opens_the_rerun_waiting_for_the_version(client, admin, engineer, target):
    run = finished_run(target, admin, OVERLOADED, workload=BIG)
    client.force_login(engineer)  # use, not deploy
    page = html(client.get(reverse("benchmarks:detail", args=[run.pk])))
    assert 'data-suggestion="more_concurrent_requests"' in page and "3 requests were refused" in page
    assert "data-apply=" not in page and 'id="apply-needs-deploy"' in page
    rule = {"rule": "more_concurrent_requests"}
    assert client.post(reverse("benchmarks:apply", args=[run.pk]), rule).status_code == 403
    assert target.specs.count() == 1

    client.force_login(admin)
    page = html(client.get(reverse("benchmarks:detail", args=[run.pk])))
    assert 'data-apply="more_concurrent_requests"' in page and "data-confirm=" in page
    refused = client.post(reverse("benchmarks:apply", args=[run.pk]), {"rule": "make_it_fast"}, follow=True)
    assert "is not among this benchmark" in html(refused)
    applied = client.post(reverse("benchmarks:apply", args=[run.pk]), rule)
    rerun = BenchmarkRun.objects.get(baseline=run)
    assert applied["Location"] == reverse("benchmarks:detail", args=[rerun.pk])
    target.refresh_from_db()
    assert target.spec.version == 2 and target.spec.max_concurrent_requests == 256
    page = html(client.get(applied["Location"]))
    assert "waiting for version 2" in page and 'id="bench-waiting"' in page
    assert f"?runs={run.pk},{rerun.pk}" in page  # compare with the baseline


def test_on_a_production_deployment_the_rerun_waits_for_the_approval(client, admin, target):
    Deployment.objects.filter(pk=target.pk).update(environment=Deployment.Environment.PRODUCTION)
    target.refresh_from_db()
    run = finished_run(target, admin, OVERLOADED, workload=BIG)
    client.force_login(admin)
    page = html(client.get(reverse("benchmarks:detail", args=[run.pk])))
    assert "This asks for an approval of a new spec version" in page
    applied = client.post(reverse("benchmarks:apply", args=[run.pk]), {"rule": "more_concurrent_requests"})
    rerun = BenchmarkRun.objects.get(baseline=run)
    assert rerun.approval is not None and target.specs.count() == 1  # nothing changes before the approval
    page = html(client.get(applied["Location"]))
    assert f"waiting for approval #{rerun.approval_id}" in page
    assert reverse("approval-detail", args=[rerun.approval_id]) in page


def test_a_given_up_rerun_says_why_and_a_drop_alert_shows_on_its_run(client, engineer, target):
    run = finished_run(target, engineer, CLEAN)
    BenchmarkRun.objects.filter(pk=run.pk).update(
        state=BenchmarkRun.State.CANCELLED, failure_cause="approval_rejected",
        failure_detail="Approval request #4 was rejected: not now",
    )  # fmt: skip
    BenchmarkAlert.objects.create(
        deployment=target, run=run, figure="output_tokens_per_s", value=80.0, baseline=100.0, change_percent=-20.0
    )
    client.force_login(engineer)
    page = html(client.get(reverse("benchmarks:detail", args=[run.pk])))
    assert "The benchmark was cancelled" in page and "was rejected: not now" in page
    assert "output_tokens_per_s dropped to 80.0 against a median of 100.0" in page and "(-20.0 %)" in page


def test_notes_show_when_there_is_no_suggestion(client, engineer, target):
    run = finished_run(target, engineer, CLEAN)
    client.force_login(engineer)
    page = html(client.get(reverse("benchmarks:detail", args=[run.pk])))
    assert 'id="bench-suggestions"' in page and "data-suggestion=" not in page and "data-advice-note" in page


# --- compare -------------------------------------------------------------------------------------------------


def test_compare_lines_up_steps_with_deltas_and_verdicts(client, engineer, target):
    before = finished_run(target, engineer, CLEAN)
    # The same loads: the first token sooner at concurrency 4 and twice the tokens per second; concurrency 1 alike.
    faster = [{"c": 1, "n": 4, "ttft": 20, "gap": 10}, {"c": 4, "n": 16, "ttft": 15, "gap": 12}]
    after = finished_run(target, engineer, faster)
    client.force_login(engineer)
    page = html(client.get(reverse("benchmarks:compare"), {"runs": f"{before.pk},{after.pk}"}))
    assert "data-baseline" in page and "page-target" in page and "<code>tgi</code>" in page
    level = page[page.index('data-load="concurrency" data-level="4.0"') :]
    level = level[: level.index("</tbody>")]
    ttft = re.search(r'<tr data-figure="ttft_ms_p50">(.*?)</tr>', level, re.S).group(1)
    assert 'data-verdict="better"' in ttft and "-15 (-50 %)" in ttft
    rate = re.search(r'<tr data-figure="output_tokens_per_s">(.*?)</tr>', level, re.S).group(1)
    assert 'data-verdict="better"' in rate and "(+100 %)" in rate
    same = page[page.index('data-load="concurrency" data-level="1.0"') :]
    assert 'data-verdict="same"' in same[: same.index("</tbody>")]
    assert 'data-verdict-badge="better"' in page  # the run's summary

    # The list's ticks (newest first on the page) compare oldest first: the baseline is the earlier run.
    ticked = html(client.get(reverse("benchmarks:compare") + f"?runs={after.pk}&runs={before.pk}"))
    assert ticked.index(f'<th data-run="{before.pk}"') < ticked.index(f'<th data-run="{after.pk}"')


def test_compare_needs_two_to_six_visible_runs(client, engineer, nobody, target):
    run = finished_run(target, engineer, CLEAN)
    client.force_login(engineer)
    alone = client.get(reverse("benchmarks:compare"), {"runs": str(run.pk)})
    assert alone.status_code == 302 and alone["Location"] == reverse("benchmarks:list")
    assert client.get(reverse("benchmarks:compare"), {"runs": f"{run.pk},999999"}).status_code == 404
    client.force_login(nobody)
    assert client.get(reverse("benchmarks:compare"), {"runs": f"{run.pk},{run.pk + 1}"}).status_code == 403
