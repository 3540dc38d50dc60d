"""Issue 17, schedules: a benchmark that repeats (started as its owner, once per due time however long beat was
away, skipped while the deployment is down or the last run still goes, disabled when its owner may no longer use
the deployment), drop alerts against the median of the schedule's earlier runs, acknowledging them, the trend, the
API and the deployment page's Benchmarks card."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.urls import reverse

from audit.models import AuditEvent
from console import roles
from console.accounts.services.access import object_grant, object_revoke
from console.errors import ApplicationError
from deployments.benchmarks import alerts, schedules, services
from deployments.benchmarks.trend import trend
from deployments.models import BenchmarkAlert, BenchmarkRun, BenchmarkSchedule, Deployment, Job
from tests.factories import DeploymentSpecFactory, HostFactory

pytestmark = pytest.mark.django_db
WORKLOAD = {"prompt_tokens": 32, "output_tokens": 16, "sweep": "concurrency", "levels": [1, 4], "duration_s": 5}
SCHEDULES = "/api/v1/benchmark-schedules/"
ALERTS = "/api/v1/benchmark-alerts/"
TREND = "/api/v1/benchmark-trend/"


@pytest.fixture
def target(admin, engineer):
    """A running deployment the engineer may use (a grant), on a host with a queue."""
    spec = DeploymentSpecFactory(current=True, deployment__name="nightly-target")
    deployment = spec.deployment
    deployment.state, deployment.host = Deployment.State.RUNNING, HostFactory(name="nightly-host")
    deployment.save(update_fields=["state", "host"])
    object_grant(actor=admin, grantee=engineer, action=roles.USE_DEPLOYMENT, target=deployment)
    return deployment


@pytest.fixture
def schedule(target, engineer):
    return schedules.schedule_create(
        actor=engineer, deployment=target, workload=WORKLOAD, interval_hours=24, drop_percent=10, note="nightly"
    )


def _finished_run(schedule, *, tokens: float, ttft: float = 100.0, failed: int = 0, light_tokens: float = 50.0):
    """A scheduled run that succeeded with two steps (concurrency 1 and 4, the heaviest), closed as its job ends."""
    run = BenchmarkRun.objects.create(
        deployment=schedule.deployment,
        spec=schedule.deployment.spec,
        created_by=schedule.created_by,
        workload=schedule.workload,
        schedule=schedule,
        state=BenchmarkRun.State.RUNNING,
    )
    services.step_recorded(
        run, {"step": 0, "concurrency": 1, "output_tokens_per_s": light_tokens, "ttft_ms_p99": 20.0, "requests": 50}
    )
    services.step_recorded(
        run,
        {
            "step": 1, "concurrency": 4, "output_tokens_per_s": tokens, "ttft_ms_p99": ttft, "e2e_ms_p99": 900.0,
            "requests": 100, "requests_ok": 100 - failed, "requests_failed": failed,
            "errors": {"http_503": failed} if failed else {},
        },
    )  # fmt: skip
    return services.benchmark_finished(run, status=Job.Status.SUCCEEDED)


# -- schedules_due -------------------------------------------------------------------------------------------------
def test_a_due_schedule_starts_a_run_as_its_creator_and_moves_on_by_one_interval(schedule, engineer, target):
    created = AuditEvent.objects.get(action="benchmark_schedule.created")
    assert created.actor_name == engineer.username and '"nightly-target"' in created.detail
    due_at = schedule.next_run_at
    assert schedules.schedules_due(now=due_at - timedelta(seconds=1)) == 0

    assert schedules.schedules_due(now=due_at + timedelta(seconds=30)) == 1
    run = BenchmarkRun.objects.get()
    assert run.schedule == schedule and run.created_by == engineer and run.job.kind == Job.Kind.BENCHMARK
    assert run.inference_key.user == engineer and run.workload == schedule.workload and run.note == "nightly"
    assert AuditEvent.objects.get(action="benchmark.started").actor_name == engineer.username
    schedule.refresh_from_db()
    assert schedule.next_run_at == due_at + timedelta(hours=24) and schedule.last_error == ""
    assert schedules.schedules_due(now=due_at + timedelta(minutes=2)) == 0  # not twice for one due time


def test_after_downtime_a_schedule_runs_once_and_keeps_its_grid(schedule):
    due_at = schedule.next_run_at
    three_days_late = due_at + timedelta(days=3, hours=5)
    assert schedules.schedules_due(now=three_days_late) == 1
    schedule.refresh_from_db()
    assert schedule.next_run_at == due_at + timedelta(days=4)  # the next slot of the grid, not a burst of three
    assert schedules.schedules_due(now=three_days_late + timedelta(minutes=1)) == 0
    assert BenchmarkRun.objects.count() == 1


def test_a_schedule_is_skipped_with_a_reason_while_the_deployment_is_down_or_its_last_run_still_goes(schedule):
    Deployment.objects.filter(pk=schedule.deployment_id).update(state=Deployment.State.STOPPED)
    due_at = schedule.next_run_at
    assert schedules.schedules_due(now=due_at) == 0
    schedule.refresh_from_db()
    assert "not running" in schedule.last_error and "Stopped" in schedule.last_error.title()
    assert schedule.enabled and schedule.next_run_at == due_at + timedelta(hours=24)
    assert not BenchmarkRun.objects.exists()

    Deployment.objects.filter(pk=schedule.deployment_id).update(state=Deployment.State.RUNNING)
    assert schedules.schedules_due(now=schedule.next_run_at) == 1
    schedule.refresh_from_db()
    assert schedule.last_error == ""
    assert schedules.schedules_due(now=schedule.next_run_at) == 0  # the first run is still pending
    schedule.refresh_from_db()
    assert "still going" in schedule.last_error and BenchmarkRun.objects.count() == 1


def test_a_schedule_whose_creator_lost_access_or_was_deactivated_is_disabled_and_audited(
    schedule, target, admin, engineer
):
    object_revoke(actor=admin, grantee=engineer, action=roles.USE_DEPLOYMENT, target=target)
    assert schedules.schedules_due(now=schedule.next_run_at) == 0
    schedule.refresh_from_db()
    assert not schedule.enabled and engineer.username in schedule.last_error
    assert "may no longer use" in schedule.last_error and not BenchmarkRun.objects.exists()
    event = AuditEvent.objects.get(action="benchmark_schedule.disabled")
    assert event.actor_name == "system" and "may no longer use" in event.detail

    # Re-enabled by an admin: it runs as the admin from now on; then the admin is deactivated.
    schedules.schedule_update(actor=admin, schedule=schedule, enabled=True)
    schedule.refresh_from_db()
    assert schedule.enabled and schedule.created_by == admin and schedule.last_error == ""
    admin.is_active = False
    admin.save(update_fields=["is_active"])
    assert schedules.schedules_due(now=schedule.next_run_at) == 0
    schedule.refresh_from_db()
    assert not schedule.enabled and "deactivated" in schedule.last_error
    assert AuditEvent.objects.filter(action="benchmark_schedule.disabled").count() == 2


def test_schedule_rules_and_audit_of_update_and_delete(target, engineer, auditor):
    with pytest.raises(ApplicationError) as refused:
        schedules.schedule_create(actor=engineer, deployment=target, workload=WORKLOAD, interval_hours=0)
    assert refused.value.field == "interval_hours"
    with pytest.raises(ApplicationError) as refused:
        schedules.schedule_create(actor=engineer, deployment=target, workload=WORKLOAD, drop_percent=95)
    assert refused.value.field == "drop_percent"
    with pytest.raises(ApplicationError) as refused:
        schedules.schedule_create(actor=engineer, deployment=target, workload={**WORKLOAD, "levels": []})
    assert refused.value.field == "levels"
    schedule = schedules.schedule_create(actor=engineer, deployment=target, workload=WORKLOAD, interval_hours=720)
    schedules.schedule_update(actor=engineer, schedule=schedule, enabled=False, drop_percent=25)
    updated = AuditEvent.objects.get(action="benchmark_schedule.updated")
    assert updated.changes["drop_percent"] == [10.0, 25.0] and updated.changes["enabled"] == [True, False]
    schedules.schedule_delete(actor=engineer, schedule=schedule)
    assert not BenchmarkSchedule.objects.exists()
    assert AuditEvent.objects.filter(action="benchmark_schedule.deleted", actor_name=engineer.username).exists()


# -- drop alerts ---------------------------------------------------------------------------------------------------
def test_a_drop_beyond_the_threshold_against_the_median_raises_an_alert_and_one_within_does_not(schedule):
    first = _finished_run(schedule, tokens=100.0)
    assert not first.alerts.exists()  # nothing to compare with yet
    for tokens in (104.0, 98.0, 250.0):  # the median (101) is not thrown by one outlier
        _finished_run(schedule, tokens=tokens)
    within = _finished_run(schedule, tokens=92.0, ttft=108.0)  # -9 % and +8 % against medians 101 and 100
    assert not BenchmarkAlert.objects.exists() and not within.alerts.exists()

    dropped = _finished_run(schedule, tokens=80.0, ttft=100.0)
    alert = BenchmarkAlert.objects.get()
    assert alert.run == dropped and alert.schedule == schedule and alert.figure == "output_tokens_per_s"
    assert alert.value == 80.0 and alert.baseline == 100.0 and alert.change_percent == -20.0  # median of 6: 100
    event = AuditEvent.objects.get(action="benchmark.alert_raised")
    assert event.actor_name == "system" and '"output_tokens_per_s"' in event.detail

    slower = _finished_run(schedule, tokens=100.0, ttft=150.0, light_tokens=10.0)  # only the light step fell
    assert [a.figure for a in slower.alerts.all()] == ["ttft_ms_p99"]


def test_errors_at_the_heaviest_step_raise_their_own_alert_and_such_runs_are_no_baseline(schedule):
    for tokens in (100.0, 100.0):
        _finished_run(schedule, tokens=tokens)
    failing = _finished_run(schedule, tokens=95.0, failed=10)
    assert [(a.figure, a.value, a.change_percent) for a in failing.alerts.all()] == [("requests_failed", 10.0, 10.0)]
    # The failing run's 95 tokens/s is no baseline: the median stays 100, so 91 is a drop of 9 %, within 10 %.
    assert not _finished_run(schedule, tokens=91.0).alerts.exists()
    # A failed run (not succeeded) raises nothing.
    run = BenchmarkRun.objects.create(deployment=schedule.deployment, schedule=schedule, workload=schedule.workload)
    services.step_recorded(run, {"step": 0, "concurrency": 4, "output_tokens_per_s": 1.0})
    services.benchmark_finished(run, status=Job.Status.FAILED)
    assert not run.alerts.exists()


def test_acknowledging_an_alert_needs_use_deployment_and_is_audited(schedule, engineer, auditor):
    _finished_run(schedule, tokens=100.0)
    alert = _finished_run(schedule, tokens=50.0).alerts.get()
    with pytest.raises(Exception) as denied:
        alerts.alert_acknowledge(actor=auditor, alert=alert)
    assert getattr(denied.value, "action", None) == roles.USE_DEPLOYMENT
    alerts.alert_acknowledge(actor=engineer, alert=alert)
    alert.refresh_from_db()
    assert alert.acknowledged_by == engineer and alert.acknowledged_at is not None
    assert AuditEvent.objects.filter(action="benchmark.alert_acknowledged", actor_name=engineer.username).exists()
    with pytest.raises(ApplicationError):
        alerts.alert_acknowledge(actor=engineer, alert=alert)


# -- trend ---------------------------------------------------------------------------------------------------------
def test_the_trend_is_the_heaviest_step_of_each_succeeded_run_oldest_first(schedule, target):
    runs = [_finished_run(schedule, tokens=tokens, ttft=ttft) for tokens, ttft in ((100.0, 90.0), (80.0, 120.0))]
    unscheduled = BenchmarkRun.objects.create(deployment=target, spec=target.spec, workload=schedule.workload)
    services.step_recorded(unscheduled, {"step": 0, "concurrency": 8, "output_tokens_per_s": 120.0, "has_errors": True})
    services.benchmark_finished(unscheduled, status=Job.Status.SUCCEEDED)
    failed = BenchmarkRun.objects.create(deployment=target, workload=schedule.workload)
    services.benchmark_finished(failed, status=Job.Status.FAILED)

    points = trend(target)
    assert [p["run"] for p in points] == [runs[0].pk, runs[1].pk, unscheduled.pk]
    assert [p["output_tokens_per_s"] for p in points] == [100.0, 80.0, 120.0]
    assert [p["ttft_ms_p99"] for p in points[:2]] == [90.0, 120.0] and points[0]["e2e_ms_p99"] == 900.0
    assert [p["scheduled"] for p in points] == [True, True, False]
    assert [p["has_errors"] for p in points] == [False, False, True]
    assert points[0]["spec_version"] == target.spec.version and points[0]["concurrency"] == 4
    assert [p["run"] for p in trend(target, limit=2)] == [runs[1].pk, unscheduled.pk]


# -- API -----------------------------------------------------------------------------------------------------------
def test_schedule_api_permissions_and_field_errors(api, target, engineer, auditor, nobody, admin):
    body = {"deployment": target.pk, "workload": WORKLOAD, "interval_hours": 12, "drop_percent": 15}
    api(auditor).post(SCHEDULES, body, expected=403)
    api(nobody).post(SCHEDULES, body, expected=403)
    api(None).post(SCHEDULES, body, expected=401)
    assert "interval_hours" in api(engineer).post(SCHEDULES, {**body, "interval_hours": 721}, expected=400).data
    assert "drop_percent" in api(engineer).post(SCHEDULES, {**body, "drop_percent": 0}, expected=400).data
    no_levels = {**body, "workload": {**WORKLOAD, "levels": []}}
    assert "levels" in api(engineer).post(SCHEDULES, no_levels, expected=400).data
    api(engineer).post(SCHEDULES, {**body, "deployment": 2**31 - 1}, expected=404)
    assert not BenchmarkSchedule.objects.exists()

    created = api(engineer).post(SCHEDULES, body).data
    assert created["runs_as"] == engineer.username and created["interval_hours"] == 12 and created["enabled"]
    url = f"{SCHEDULES}{created['id']}/"
    assert api(auditor).get(SCHEDULES).data["count"] == 1 and api(auditor).get(url).data["drop_percent"] == 15
    api(nobody).get(SCHEDULES, expected=403)
    api(auditor).patch(url, {"enabled": False}, expected=403)
    assert api(engineer).patch(url, {"enabled": False}).data["enabled"] is False
    assert "interval_hours" in api(engineer).patch(url, {"interval_hours": 0}, expected=400).data
    api(auditor).delete(url, expected=403)
    api(engineer).delete(url)
    assert not BenchmarkSchedule.objects.exists()


def test_alert_and_trend_api(api, schedule, target, engineer, auditor, nobody):
    _finished_run(schedule, tokens=100.0)
    alert = _finished_run(schedule, tokens=60.0).alerts.get()
    listed = api(auditor).get(f"{ALERTS}?deployment={target.pk}&open=1").data
    assert [row["id"] for row in listed["results"]] == [alert.pk] and listed["results"][0]["change_percent"] == -40.0
    api(nobody).get(ALERTS, expected=403)
    api(auditor).post(f"{ALERTS}{alert.pk}/acknowledge/", expected=403)
    acknowledged = api(engineer).post(f"{ALERTS}{alert.pk}/acknowledge/", expected=200).data
    assert acknowledged["acknowledged_by"] == engineer.username and acknowledged["acknowledged_at"]
    assert api(auditor).get(f"{ALERTS}?open=1").data["count"] == 0
    assert api(auditor).get(ALERTS).data["count"] == 1
    api(engineer).post(f"{ALERTS}{alert.pk}/acknowledge/", expected=400)

    points = api(auditor).get(f"{TREND}?deployment={target.pk}").data
    assert [p["output_tokens_per_s"] for p in points] == [100.0, 60.0] and points[1]["scheduled"] is True
    assert "deployment" in api(auditor).get(TREND, expected=400).data
    api(auditor).get(f"{TREND}?deployment=999999", expected=404)
    api(nobody).get(f"{TREND}?deployment={target.pk}", expected=403)


# -- the deployment page -------------------------------------------------------------------------------------------
def test_the_deployment_page_shows_the_trend_the_open_alerts_and_the_schedules(client, schedule, target, engineer):
    _finished_run(schedule, tokens=100.0)
    alert = _finished_run(schedule, tokens=70.0).alerts.get()
    client.force_login(engineer)
    page = client.get(reverse("deployment-detail", args=[target.pk])).content.decode()
    assert 'id="benchmarks"' in page and f'data-alert="{alert.pk}"' in page and f'data-acknowledge="{alert.pk}"' in page
    data = page.split('id="bench-trend-data" type="application/json">', 1)[1].split("</script>", 1)[0]
    assert [p["output_tokens_per_s"] for p in json.loads(data)] == [100.0, 70.0]
    assert f'data-schedule="{schedule.pk}"' in page and "bench_trend.js" in page
    assert reverse("benchmarks:detail", args=[alert.run_id]) in page and f"?deployment={target.pk}" in page
    assert 'id="bench-schedule-add"' in page

    # The acknowledge button on the page; afterwards the warning is gone.
    response = client.post(reverse("bench_schedules:alert-acknowledge", args=[alert.pk]))
    assert response.status_code == 302 and response.url.endswith("#benchmarks")
    page = client.get(reverse("deployment-detail", args=[target.pk])).content.decode()
    assert f'data-alert="{alert.pk}"' not in page and 'id="bench-alerts"' not in page


def test_page_actions_add_toggle_and_delete_a_schedule_and_the_dashboard_counts_open_alerts(
    client, target, engineer, auditor
):
    client.force_login(engineer)
    response = client.post(
        reverse("bench_schedules:create", args=[target.pk]),
        {"source": "preset", "interval_hours": 6, "drop_percent": 20, "note": "every six hours"},
    )
    assert response.status_code == 302
    schedule = BenchmarkSchedule.objects.get()
    assert schedule.interval_hours == 6 and schedule.drop_percent == 20 and schedule.created_by == engineer
    client.post(reverse("bench_schedules:toggle", args=[schedule.pk]), {"enabled": "0"})
    schedule.refresh_from_db()
    assert not schedule.enabled

    _finished_run(schedule, tokens=100.0)
    _finished_run(schedule, tokens=10.0)
    dashboard = client.get(reverse("dashboard")).content.decode()
    assert 'id="benchmark-alerts"' in dashboard and f'data-alert-deployment="{target.pk}"' in dashboard

    client.force_login(auditor)  # may view, may not use: no buttons on the page, a 403 on the action
    page = client.get(reverse("deployment-detail", args=[target.pk])).content.decode()
    assert f'data-schedule="{schedule.pk}"' in page and "data-delete-schedule" not in page
    assert "data-acknowledge" not in page and 'id="bench-schedule-add"' not in page
    assert client.post(reverse("bench_schedules:delete", args=[schedule.pk])).status_code == 403
    client.force_login(engineer)
    client.post(reverse("bench_schedules:delete", args=[schedule.pk]))
    assert not BenchmarkSchedule.objects.exists()


@pytest.mark.parametrize("field", ["note", "interval_hours"])
def test_the_page_form_refuses_a_nul_character_on_the_field_and_keeps_the_form_open(client, target, engineer, field):
    client.force_login(engineer)
    data = {"source": "preset", "interval_hours": "6", "drop_percent": "20", "note": "nightly"}
    response = client.post(reverse("bench_schedules:create", args=[target.pk]), {**data, field: "6\x00"})
    page = response.content.decode()
    assert response.status_code == 400 and not BenchmarkSchedule.objects.exists()
    assert f'data-field-error="{field}"' in page and 'id="bench-schedule-add" open' in page
    assert 'value="nightly"' in page or field == "note"  # what the user typed stays
