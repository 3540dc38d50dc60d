"""Charts from Prometheus when PROMETHEUS_URL is set: Debian's real prometheus, its TSDB backfilled (promtool
create-blocks-from openmetrics) with two hours of the gateway's, the servers' and the agents' series as the contract
of issue 19 names them, for two deployments and two hosts; the charts' PromQL must pick out the one deployment
(tokens/s, queue, latency quantiles, errors) or host (each GPU's line), and the fleet's sums. Without an answer from
Prometheus the charts fall back to the console's own samples and say why."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
from django.utils import timezone

from deployments.models import Deployment
from deployments.monitoring import charts
from deployments.monitoring.models import DeploymentSample
from tests.conftest import need
from tests.factories import DeploymentFactory, GpuFactory, HostFactory
from tests.support.serve_process import free_port

pytestmark = pytest.mark.django_db
PROMETHEUS, PROMTOOL = "/usr/bin/prometheus", "/usr/bin/promtool"
SCRAPE = 15  # seconds between the backfilled samples


def openmetrics(now: int) -> str:
    """Two hours of series for "chat" (10 completion tokens/s, 12 requests and 4 errors a minute, every call between
    100 and 250 ms, 4 waiting in TGI's queue) and "other" (busier, to show the label matching)."""
    start = now - 2 * 3600
    times = list(range(start - start % SCRAPE, now + 1, SCRAPE))
    rates = {"chat": (150, 3, 1, 4), "other": (3000, 30, 9, 40)}  # per scrape: tokens, calls, errors; queue
    lines = ["# TYPE llmdeploy_gateway_tokens counter"]
    for i, at in enumerate(times):
        for name, (tokens, _calls, _errors, _queue) in rates.items():
            lines.append(f'llmdeploy_gateway_tokens_total{{deployment="{name}",kind="completion"}} {tokens * i} {at}')
            lines.append(f'llmdeploy_gateway_tokens_total{{deployment="{name}",kind="prompt"}} {99 * i} {at}')
    lines.append("# TYPE llmdeploy_gateway_requests counter")
    for i, at in enumerate(times):
        for name, (_tokens, calls, errors, _queue) in rates.items():
            # errors: half refused by the gateway (429), half failed upstream (503), as the samples count them
            for code, count in (("200", calls - errors), ("429", errors / 2), ("503", errors / 2)):
                lines.append(f'llmdeploy_gateway_requests_total{{deployment="{name}",code="{code}"}} {count * i} {at}')
    lines.append("# TYPE llmdeploy_gateway_errors counter")
    for i, at in enumerate(times):
        for name, (_tokens, _calls, errors, _queue) in rates.items():
            lines.append(f'llmdeploy_gateway_errors_total{{deployment="{name}"}} {errors / 2 * i} {at}')
    histogram = "llmdeploy_gateway_request_duration_seconds"
    lines.append(f"# TYPE {histogram} histogram")
    for i, at in enumerate(times):
        for name, (_tokens, calls, _errors, _queue) in rates.items():
            done = calls * i
            fast = done if name == "other" else 0  # other's calls all under 100 ms
            for bound, count in (("0.1", fast), ("0.25", done), ("+Inf", done)):
                lines.append(f'{histogram}_bucket{{deployment="{name}",le="{bound}"}} {count} {at}')
            lines.append(f'{histogram}_count{{deployment="{name}"}} {done} {at}')
            lines.append(f'{histogram}_sum{{deployment="{name}"}} {0.175 * done} {at}')
    # the agents' exporters: gpu-a's two GPUs (busy 30 % and 70 %, 20 and 60 GB of 80), gpu-b's one (idle, 1 of 40)
    gpus = {
        ("gpu-a", "0"): (30, 20, 80, 61, 300),
        ("gpu-a", "1"): (70, 60, 80, 75, 550),
        ("gpu-b", "0"): (2, 1, 40, 35, 60),
    }
    for metric, column, scale in (
        ("llmdeploy_gpu_utilization_percent", 0, 1),
        ("llmdeploy_gpu_memory_used_bytes", 1, 10**9),
        ("llmdeploy_gpu_memory_total_bytes", 2, 10**9),
        ("llmdeploy_gpu_temperature_celsius", 3, 1),
        ("llmdeploy_gpu_power_watts", 4, 1),
    ):
        lines.append(f"# TYPE {metric} gauge")
        for at in times:
            for (host, index), values in gpus.items():
                labels = f'host="{host}",gpu="{index}",uuid="GPU-{host}-{index}",name="NVIDIA H100"'
                lines.append(f"{metric}{{{labels}}} {values[column] * scale} {at}")
    lines.append("# TYPE tgi_queue_size gauge")
    for at in times:
        for name, (_tokens, _calls, _errors, queue) in rates.items():
            lines.append(f'tgi_queue_size{{deployment="{name}"}} {queue} {at}')
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


@pytest.fixture
def prometheus(tmp_path: Path, settings):
    need(Path(PROMETHEUS).exists() and Path(PROMTOOL).exists(), "Debian's prometheus (apt-get install prometheus)")
    source = tmp_path / "series.om"
    source.write_text(openmetrics(int(time.time())))
    data = tmp_path / "tsdb"
    subprocess.run([PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", str(source), str(data)], check=True)
    config = tmp_path / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1h\n")
    port = free_port()
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()
            time.sleep(0.2)
        settings.PROMETHEUS_URL = url + "/"
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()
        shutil.rmtree(data, ignore_errors=True)


def test_a_deployments_charts_read_prometheus_for_that_deployment(prometheus, client, engineer):
    chat = DeploymentFactory(name="chat", state=Deployment.State.RUNNING)
    DeploymentFactory(name="other", state=Deployment.State.RUNNING)
    DeploymentSample.objects.create(deployment=chat, at=timezone.now(), requests=999)  # not what is shown
    client.force_login(engineer)
    figure = client.get(f"/fleet/deployments/{chat.pk}/charts/?window=1h").json()
    assert figure["source"] == "prometheus" and prometheus in figure["source_label"] and figure["note"] == ""
    series = {chart["key"]: chart["series"] for chart in figure["charts"]}
    tokens = series["tokens"][0]["values"]
    assert len(tokens) == 60 and tokens == [pytest.approx(10.0, rel=1e-6)] * 60
    assert series["queue"][0]["values"] == [4.0] * 60
    p50, p95, ttft = (s["values"] for s in series["latency"])
    assert p50 == [pytest.approx(175.0)] * 60 and p95 == [pytest.approx(242.5)] * 60
    assert ttft == [None] * 60  # TGI has no first-token histogram: a gap, not a zero
    requests_per_minute, errors_per_minute = (s["values"] for s in series["errors"])
    assert requests_per_minute == [pytest.approx(12.0)] * 60 and errors_per_minute == [pytest.approx(4.0)] * 60


def test_the_last_days_at_quarter_steps_hold_the_hours_prometheus_has(prometheus):
    chat = DeploymentFactory(name="chat", state=Deployment.State.RUNNING)
    figure = charts.deployment_charts(chat, charts.window_of("7d")).as_dict()
    assert figure["step"] == 900 and figure["source"] == "prometheus"
    queue = figure["charts"][1]["series"][0]["values"]
    assert queue[-1] == 4.0 and queue[0] is None  # a week ago: nothing backfilled


def test_a_hosts_gpus_and_the_fleet_read_the_agents_exporters_through_prometheus(prometheus, client, admin):
    host = HostFactory(name="gpu-a")
    GpuFactory(host=host)
    GpuFactory(host=host)
    GpuFactory(host=host)  # GPU 2 exports nothing: a gap
    client.force_login(admin)
    figure = client.get(f"/fleet/hosts/{host.pk}/charts/?window=1h").json()
    assert figure["source"] == "prometheus" and figure["note"] == ""
    latest = {chart["key"]: [s["values"][-1] for s in chart["series"]] for chart in figure["charts"]}
    assert latest == {
        "utilization": [30.0, 70.0, None],
        "memory": [20.0, 60.0, None],
        "temperature": [61.0, 75.0, None],
        "power": [300.0, 550.0, None],
    }
    fleet = client.get("/fleet/charts/?window=24h").json()
    assert fleet["source"] == "prometheus" and len(fleet["x"]) == 1440
    utilization, memory = fleet["charts"]
    assert utilization["series"][0]["values"][-1] == pytest.approx(34.0)  # the mean of 30, 70 and 2
    assert [s["values"][-1] for s in memory["series"]] == [81.0, 200.0]
    assert utilization["series"][0]["values"][0] is None  # a day ago: nothing backfilled


def test_without_an_answer_from_prometheus_the_charts_show_the_samples_and_say_why(settings, client, engineer):
    settings.PROMETHEUS_URL = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    chat = DeploymentFactory(name="chat", state=Deployment.State.RUNNING)
    stamp = int(timezone.now().timestamp())
    at = timezone.datetime.fromtimestamp(stamp - stamp % 60 - 60, tz=timezone.get_fixed_timezone(0))
    DeploymentSample.objects.create(deployment=chat, at=at, requests=7, tokens_per_s=3.5)
    client.force_login(engineer)
    figure = client.get(f"/fleet/deployments/{chat.pk}/charts/?window=1h").json()
    assert figure["source"] == "console" and figure["note"].startswith("Prometheus did not answer")
    assert settings.PROMETHEUS_URL in figure["note"]
    assert figure["charts"][0]["series"][0]["values"][-1] == 3.5
