"""The fleet dashboard and the charts' series from the console's own samples: what an admin sees of hosts, GPUs,
deployments, jobs and failures; each chart's points where their samples say; the 15-minute windows from quarter
rows or averaged minute rows; and the JSON (pages' and API's) checked as the pages they serve."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone
from guardian.shortcuts import assign_perm

from deployments.models import Deployment, Gpu, GpuReservation, Host, Job
from deployments.monitoring import charts
from deployments.monitoring.models import MINUTE, QUARTER, DeploymentSample, GpuSample
from tests.conftest import Api
from tests.factories import DeploymentFactory, GpuFactory, HostFactory, JobFactory, UserFactory

pytestmark = pytest.mark.django_db
GB = 10**9


def minute_ago(n: int, now: datetime | None = None) -> datetime:
    """The start of the minute n minutes before the current one (the chart's x values are minute starts)."""
    stamp = int((now or timezone.now()).timestamp())
    return datetime.fromtimestamp(stamp - stamp % 60 - 60 * n, tz=UTC)


@pytest.fixture
def fleet(db):
    now = timezone.now()
    busy = HostFactory(name="gpu-a", last_heartbeat=now - timedelta(seconds=20))
    HostFactory(name="gpu-b", status=Host.Status.OFFLINE, last_heartbeat=now - timedelta(hours=3))
    gpu = GpuFactory(
        host=busy,
        name="NVIDIA H100",
        memory_total=80 * GB,
        telemetry={"utilization": 87.0, "memory_used": 60 * GB, "memory_total": 80 * GB},
        telemetry_at=now - timedelta(seconds=20),
    )
    GpuFactory(host=busy, health=Gpu.Health.FAILED, health_cause="xid-79")
    GpuReservation.objects.create(gpu=gpu, memory_bytes=50 * GB, holder="deployment:1")
    DeploymentFactory(name="chat", state=Deployment.State.RUNNING)
    broken = DeploymentFactory(name="broken", state=Deployment.State.FAILED, failure_cause="oom")
    Deployment.objects.filter(pk=broken.pk).update(state_changed_at=now - timedelta(hours=1))
    JobFactory(status=Job.Status.RUNNING)
    JobFactory(status=Job.Status.FAILED, failure_cause="disk-full", finished_at=now - timedelta(minutes=5))
    JobFactory(status=Job.Status.FAILED, failure_cause="long-ago", finished_at=now - timedelta(days=30))
    return {"host": busy, "gpu": gpu, "broken": broken}


def test_admins_land_on_the_fleet_with_hosts_gpus_health_deployments_jobs_and_failures(client, admin, fleet):
    client.force_login(admin)
    page = client.get("/").content.decode()
    assert 'id="fleet"' in page and 'id="my-actions"' in page  # the fleet, and the admin's own cards still
    assert "1 / 2" in page  # hosts online
    assert re.search(r'<td rowspan="2" class="small" data-heartbeat>\d+ s ago</td>', page)  # gpu-a: two GPUs
    assert '<td class="small" data-heartbeat>3 h 00 min ago</td>' in page  # gpu-b: offline, no GPU
    assert "60.0 GB / 80.0 GB" in page and "87 %" in page
    assert '<td class="small" data-reserved>50.0 GB</td>' in page
    assert 'data-health="ok">healthy: 1<' in page and 'data-health="failed">failed: 1<' in page
    assert 'data-deployment-state="running">running: 1<' in page and 'data-deployment-state="failed">failed: 1<' in page
    assert 'data-jobs="running">1 running<' in page
    # failures of the last week, newest first, each linking to what failed; the month-old one is not there
    failures = page[page.index('id="fleet-failures"') :]
    assert failures.index("disk-full") < failures.index("oom")
    assert f'href="/deployments/{fleet["broken"].pk}/">broken</a>' in failures
    assert "long-ago" not in failures
    assert 'data-url="/fleet/charts/"' in page and "vendor/uplot/uPlot.iife.min.js" in page


def test_other_roles_keep_their_dashboard_and_the_fleet_page_shows_what_they_may_view(client, engineer, fleet):
    client.force_login(engineer)
    assert 'id="fleet"' not in client.get("/").content.decode()
    page = client.get("/fleet/").content.decode()
    assert 'id="fleet-gpus"' in page and "gpu-a" in page


def test_an_empty_fleet_says_so(client, admin):
    client.force_login(admin)
    page = client.get("/fleet/").content.decode()
    assert 'id="fleet-no-hosts"' in page and 'id="fleet-no-failures"' in page
    figure = client.get("/fleet/charts/").json()
    assert figure["points"] == 0 and figure["source"] == "console"


def test_a_hosts_gpu_charts_put_each_sample_at_its_minute(client, engineer, fleet):
    gpu = fleet["gpu"]
    now = timezone.now()
    for n, busy in ((3, 50.0), (2, 70.0)):
        GpuSample.objects.create(
            gpu=gpu, at=minute_ago(n, now), utilization=busy, memory_used=40 * GB, temperature=61, power_w=300
        )
    GpuSample.objects.create(gpu=gpu, at=minute_ago(90, now), utilization=5.0)  # outside the hour
    client.force_login(engineer)
    figure = client.get(f"/fleet/hosts/{fleet['host'].pk}/charts/?window=1h").json()
    assert figure["window"] == "1h" and figure["step"] == 60 and len(figure["x"]) == 60
    by_key = {chart["key"]: chart for chart in figure["charts"]}
    assert list(by_key) == ["utilization", "memory", "temperature", "power"]
    assert [s["label"] for s in by_key["utilization"]["series"]] == ["GPU 0", "GPU 1"]
    values = dict(zip(figure["x"], by_key["utilization"]["series"][0]["values"], strict=True))
    assert values[int(minute_ago(3, now).timestamp())] == 50.0
    assert values[int(minute_ago(2, now).timestamp())] == 70.0
    assert sum(v is not None for v in values.values()) == 2  # a gap elsewhere, not a zero
    memory = dict(zip(figure["x"], by_key["memory"]["series"][0]["values"], strict=True))
    assert memory[int(minute_ago(2, now).timestamp())] == 40.0  # GB
    assert figure["points"] == 8  # two minutes x four charts of GPU 0; GPU 1 sent nothing
    page = client.get(f"/inventory/hosts/{fleet['host'].pk}/").content.decode()
    assert 'id="host-gpu-charts"' in page and f'data-url="/fleet/hosts/{fleet["host"].pk}/charts/"' in page


def test_long_windows_use_quarter_rows_and_average_minute_rows_where_none_exist(fleet):
    gpu = fleet["gpu"]
    now = datetime(2026, 5, 1, 12, 7, tzinfo=UTC)
    quarter = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
    GpuSample.objects.create(gpu=gpu, at=quarter, resolution=QUARTER, utilization=40.0)
    GpuSample.objects.create(gpu=gpu, at=quarter + timedelta(minutes=1), utilization=99.0)  # the quarter row wins
    for minute, busy in ((0, 10.0), (5, 20.0), (14, 30.0)):  # the 11:30 quarter has no row of its own
        GpuSample.objects.create(gpu=gpu, at=datetime(2026, 5, 1, 11, 30 + minute, tzinfo=UTC), utilization=busy)
    figure = charts.host_gpu_charts([gpu], charts.window_of("7d"), now=now).as_dict()
    assert figure["step"] == QUARTER and len(figure["x"]) == 7 * 96
    values = dict(zip(figure["x"], figure["charts"][0]["series"][0]["values"], strict=True))
    assert values[int(quarter.timestamp())] == 40.0
    assert values[int(datetime(2026, 5, 1, 11, 30, tzinfo=UTC).timestamp())] == 20.0
    assert figure["end"] == int(datetime(2026, 5, 1, 12, 0, tzinfo=UTC).timestamp())


def test_fleet_charts_average_utilisation_and_add_memory(client, admin, fleet):
    now = timezone.now()
    other = Gpu.objects.get(host=fleet["host"], index=1)
    at = minute_ago(5, now)
    GpuSample.objects.create(gpu=fleet["gpu"], at=at, utilization=80.0, memory_used=60 * GB, memory_total=80 * GB)
    GpuSample.objects.create(gpu=other, at=at, utilization=20.0, memory_used=4 * GB, memory_total=16 * GB)
    client.force_login(admin)
    figure = client.get("/fleet/charts/?window=1h").json()
    utilization, memory = figure["charts"]
    index = figure["x"].index(int(at.timestamp()))
    assert utilization["series"][0]["values"][index] == 50.0
    assert [s["values"][index] for s in memory["series"]] == [64.0, 96.0]


def test_deployment_charts_from_samples(client, engineer, fleet):
    deployment = Deployment.objects.get(name="chat")
    now = timezone.now()
    DeploymentSample.objects.create(
        deployment=deployment,
        at=minute_ago(1, now),
        requests=30,
        errors=2,
        completion_tokens=1200,
        tokens_per_s=20.0,
        latency_p50_ms=180.0,
        latency_p95_ms=420.0,
        ttft_p50_ms=35.0,
        queue=4,
    )
    client.force_login(engineer)
    figure = client.get(f"/fleet/deployments/{deployment.pk}/charts/").json()
    assert figure["window"] == "24h" and figure["source"] == "console" and figure["note"] == ""
    assert figure["source_label"] == "the console's own samples"
    index = figure["x"].index(int(minute_ago(1, now).timestamp()))
    latest = {chart["key"]: [s["values"][index] for s in chart["series"]] for chart in figure["charts"]}
    assert latest == {"tokens": [20.0], "queue": [4.0], "latency": [180.0, 420.0, 35.0], "errors": [30.0, 2.0]}
    page = client.get(f"/deployments/{deployment.pk}/").content.decode()
    assert 'id="deployment-charts"' in page and f'data-url="/fleet/deployments/{deployment.pk}/charts/"' in page


def test_a_window_the_charts_do_not_know_is_refused(client, engineer, fleet):
    client.force_login(engineer)
    response = client.get(f"/fleet/hosts/{fleet['host'].pk}/charts/?window=2d")
    assert response.status_code == 400 and "1h, 24h, 7d, 30d" in response.json()["window"][0]
    Api(engineer).get("/api/v1/charts/fleet/?window=5m", expected=400)


def test_the_json_answers_who_may_view_the_page_and_the_api_does_the_same(client, fleet):
    deployment = Deployment.objects.get(name="chat")
    hidden = fleet["broken"]
    granted = UserFactory(username="grace-granted", roles=[])
    assign_perm("deployments.view_deployment", granted, deployment)
    client.force_login(granted)
    assert client.get(f"/fleet/deployments/{deployment.pk}/charts/").status_code == 200
    assert client.get(f"/fleet/deployments/{hidden.pk}/charts/").status_code == 404
    assert client.get(f"/fleet/hosts/{fleet['host'].pk}/charts/").status_code == 403
    assert client.get("/fleet/charts/").status_code == 403
    api = Api(granted)
    figure = api.get(f"/api/v1/charts/deployments/{deployment.pk}/?window=1h").json()
    assert figure["window"] == "1h" and [c["key"] for c in figure["charts"]] == ["tokens", "queue", "latency", "errors"]
    api.get(f"/api/v1/charts/deployments/{hidden.pk}/", expected=404)
    api.get(f"/api/v1/charts/hosts/{fleet['host'].pk}/", expected=403)
    api.get("/api/v1/charts/fleet/", expected=403)
    Api(None).get("/api/v1/charts/fleet/", expected=401)
    assert client.logout() is None and client.get("/fleet/charts/").status_code == 302
    host_figure = Api(UserFactory(username="ava-auditor", roles=["auditor"])).get(
        f"/api/v1/charts/hosts/{fleet['host'].pk}/?window=30d"
    )
    assert host_figure.json()["step"] == QUARTER and MINUTE == 60


def test_the_fleets_week_adds_each_gpus_averaged_minutes_where_no_quarter_row_exists(fleet):
    other = Gpu.objects.get(host=fleet["host"], index=1)
    now = datetime(2026, 5, 1, 12, 7, tzinfo=UTC)
    quarter = datetime(2026, 5, 1, 11, 0, tzinfo=UTC)
    for gpu, busy, used in ((fleet["gpu"], 60.0, 40), (other, 20.0, 8)):
        GpuSample.objects.create(
            gpu=gpu, at=quarter, resolution=QUARTER, utilization=busy, memory_used=used * GB, memory_total=80 * GB
        )
    late = datetime(2026, 5, 1, 11, 45, tzinfo=UTC)  # downsampling has not reached this quarter yet
    readings = {fleet["gpu"]: (80.0, (10, 30), 80), other: (40.0, (2, 6), 16)}
    for gpu, (busy, used, total) in readings.items():
        for minute, gigabytes in enumerate(used):
            at = late + timedelta(minutes=minute)
            used_bytes, total_bytes = gigabytes * GB, total * GB
            GpuSample.objects.create(gpu=gpu, at=at, utilization=busy, memory_used=used_bytes, memory_total=total_bytes)
    figure = charts.fleet_gpu_charts([fleet["gpu"], other], charts.window_of("7d"), now=now).as_dict()
    utilization, memory = figure["charts"]
    index = {at: i for i, at in enumerate(figure["x"])}
    on_time, behind = index[int(quarter.timestamp())], index[int(late.timestamp())]
    assert utilization["series"][0]["values"][on_time] == 40.0
    assert [s["values"][on_time] for s in memory["series"]] == [48.0, 160.0]
    assert utilization["series"][0]["values"][behind] == 60.0
    assert [s["values"][behind] for s in memory["series"]] == [24.0, 96.0]  # means 20 GB + 4 GB of 80 + 16


def test_deployment_samples_taken_more_often_than_a_minute_add_up_into_it(fleet):
    deployment = Deployment.objects.get(name="chat")
    now = datetime(2026, 5, 1, 12, 7, 10, tzinfo=UTC)
    minute = datetime(2026, 5, 1, 12, 5, tzinfo=UTC)
    for offset, (calls, speed) in enumerate(((10, 4.0), (20, 8.0))):
        DeploymentSample.objects.create(
            deployment=deployment, at=minute + timedelta(seconds=30 * offset), resolution=30, requests=calls,
            tokens_per_s=speed,
        )  # fmt: skip
    figure = charts.deployment_charts(deployment, charts.window_of("1h"), now=now).as_dict()
    index = figure["x"].index(int(minute.timestamp()))
    by_key = {chart["key"]: chart["series"] for chart in figure["charts"]}
    assert by_key["errors"][0]["values"][index] == 30.0 and by_key["tokens"][0]["values"][index] == 6.0
