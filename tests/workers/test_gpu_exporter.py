"""The agent's Prometheus exporter (workers.gpu_exporter) over real HTTP, read with prometheus_client's parser and
checked by Debian's promtool."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import fake_nvml
from workers.gpu_exporter import advertised_address, start_exporter
from workers.nvml import XidListener

UUID = "GPU-00000000-1111-2222-3333-444444444400"
GPU = {"host": "gpu-node-1", "gpu": "0", "uuid": UUID, "name": "NVIDIA H200"}
GPU_SERIES = [
    "llmdeploy_gpu_utilization_percent",
    "llmdeploy_gpu_memory_used_bytes",
    "llmdeploy_gpu_memory_total_bytes",
    "llmdeploy_gpu_temperature_celsius",
    "llmdeploy_gpu_power_watts",
    "llmdeploy_gpu_power_limit_watts",
    "llmdeploy_gpu_sm_clock_mhz",
    "llmdeploy_gpu_memory_clock_mhz",
    "llmdeploy_gpu_throttle_reasons",
    "llmdeploy_gpu_thermal_throttle",
    "llmdeploy_gpu_remapped_rows_pending",
]


@pytest.fixture
def gpu_state(tmp_path, monkeypatch):
    path = tmp_path / "nvml-state.json"
    monkeypatch.setenv("FAKE_NVML_STATE", str(path))
    monkeypatch.setattr(fake_nvml, "_delivered", {})

    def write(state: dict) -> None:
        path.with_suffix(".tmp").write_text(json.dumps(state))
        os.replace(path.with_suffix(".tmp"), path)

    write({})
    return write


@pytest.fixture
def exporter(tmp_path):
    """Start exporters on free ports; shut them down after the test."""
    servers = []

    def start(token: str = "", xids=None):
        started = start_exporter(
            "gpu-node-1", "127.0.0.1", 0, nvml=fake_nvml, xids=xids, token=token, model_store=tmp_path, version="t1"
        )
        assert started is not None
        servers.append(started[0])
        return started[1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def scrape(address: str, token: str = "") -> str:
    request = urllib.request.Request(f"http://{address}/metrics")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - http://, built above
        return response.read().decode()


def samples(text: str) -> dict[str, list]:
    found: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def only(found: dict, name: str, **labels):
    matching = [s for s in found.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(matching) == 1, (name, labels, found.get(name))
    return matching[0]


def test_every_gpu_series_of_the_contract_with_its_labels(exporter, gpu_state, tmp_path):
    gpu_state({"0": {"temperature": 91, "throttle_reasons": 0x40, "ecc_corrected": 5, "remapped_rows_pending": True}})
    text = scrape(exporter())
    found = samples(text)
    for name in GPU_SERIES:
        assert only(found, name).labels == GPU, name
    assert only(found, "llmdeploy_gpu_temperature_celsius").value == 91
    assert only(found, "llmdeploy_gpu_power_watts").value == 118.565
    assert only(found, "llmdeploy_gpu_power_limit_watts").value == 700
    assert only(found, "llmdeploy_gpu_memory_total_bytes").value == 150754820096
    assert only(found, "llmdeploy_gpu_throttle_reasons").value == 0x40
    assert only(found, "llmdeploy_gpu_thermal_throttle").value == 1  # HW thermal slowdown
    assert only(found, "llmdeploy_gpu_remapped_rows_pending").value == 1
    assert only(found, "llmdeploy_gpu_ecc_errors_total", type="corrected").value == 5
    assert only(found, "llmdeploy_gpu_ecc_errors_total", type="uncorrected").value == 0
    assert only(found, "llmdeploy_gpu_remapped_rows", type="correctable").labels == {**GPU, "type": "correctable"}
    assert only(found, "llmdeploy_gpu_remapped_rows", type="uncorrectable").value == 0
    # NotSupported on the H200 (it remaps rows instead): no series, not a made-up 0
    assert "llmdeploy_gpu_retired_pages" not in found and "llmdeploy_gpu_retired_pages_pending" not in found
    usage = shutil.disk_usage(tmp_path)
    assert only(found, "llmdeploy_model_store_size_bytes").value == usage.total
    assert only(found, "llmdeploy_model_store_size_bytes").labels == {"host": "gpu-node-1"}
    assert abs(only(found, "llmdeploy_model_store_free_bytes").value - usage.free) < 64 * 1024 * 1024
    info = only(found, "llmdeploy_agent_info")
    assert info.value == 1
    assert info.labels == {
        "host": "gpu-node-1",
        "version": "t1",
        "driver": "580.159.04",
        "cuda": "13.0",
        "source": "nvml",
    }
    promtool = subprocess.run(
        ["/usr/bin/promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert promtool.returncode == 0, promtool.stdout + promtool.stderr


def test_retired_pages_are_served_where_nvml_counts_them(exporter, gpu_state):
    gpu_state({"0": {"retired_pages_single": 3, "retired_pages_double": 1, "retired_pages_pending": True}})
    found = samples(scrape(exporter()))
    assert only(found, "llmdeploy_gpu_retired_pages", cause="single_bit").value == 3
    assert only(found, "llmdeploy_gpu_retired_pages", cause="double_bit").value == 1
    assert only(found, "llmdeploy_gpu_retired_pages_pending").value == 1


def test_xid_errors_count_up_per_xid_since_the_exporter_started(exporter, gpu_state):
    listener = XidListener(fake_nvml, wait_ms=50)
    address = exporter(xids=listener.cursor())
    listener.start()
    try:
        assert listener.ready.wait(5)
        assert "llmdeploy_gpu_xid_errors_total" not in samples(scrape(address))
        gpu_state({"0": {"xids": [79]}})
        assert _xid_count(address, "79", 1) == 1
        gpu_state({"0": {"xids": [79, 79, 48]}})
        assert _xid_count(address, "79", 2) == 2
        found = samples(scrape(address))  # a scrape with no new XID keeps the counts
        assert only(found, "llmdeploy_gpu_xid_errors_total", xid="48").value == 1
        assert only(found, "llmdeploy_gpu_xid_errors_total", xid="79").labels == {**GPU, "xid": "79"}
        assert only(found, "llmdeploy_gpu_xid_errors_total", xid="79").value == 2
    finally:
        listener.stop()


def _xid_count(address: str, xid: str, expected: int) -> float:
    deadline = time.monotonic() + 5
    value = 0.0
    while time.monotonic() < deadline and value < expected:
        for sample in samples(scrape(address)).get("llmdeploy_gpu_xid_errors_total", []):
            value = sample.value if sample.labels["xid"] == xid else value
        time.sleep(0.05)
    return value


def test_with_a_token_a_scrape_without_it_is_refused(exporter):
    address = exporter(token="s3cret")
    for given in ("", "wrong"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            scrape(address, token=given)
        assert refused.value.code == 401
        assert refused.value.headers["WWW-Authenticate"] == "Bearer"
    assert "llmdeploy_gpu_temperature_celsius" in scrape(address, token="s3cret")


def test_a_taken_port_is_logged_once_and_no_exporter_starts(tmp_path, caplog):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with caplog.at_level(logging.WARNING, logger="workers.gpu_exporter"):
            assert (
                start_exporter("gpu-node-1", "127.0.0.1", port, nvml=fake_nvml, token="", model_store=tmp_path) is None
            )
        assert [r.getMessage() for r in caplog.records] == [
            f"agent gpu-node-1: port {port} on 127.0.0.1 is taken; no metrics exporter"
        ]
    finally:
        taken.close()


def test_the_address_prometheus_is_given():
    assert advertised_address("0.0.0.0:9835") == f"{socket.getfqdn()}:9835"
    assert advertised_address("0.0.0.0:9835", "0.0.0.0") == f"{socket.getfqdn()}:9835"  # noqa: S104
    assert advertised_address("10.0.0.5:9835", "10.0.0.5") == "10.0.0.5:9835"
    assert advertised_address("[::]:9835", "::") == f"{socket.getfqdn()}:9835"


@pytest.mark.django_db(transaction=True)  # start_agent closes the connection, as in a worker
def test_the_agent_serves_its_exporter_and_reports_where(settings, tmp_path):
    from deployments.inventory.models import Host
    from workers import agent

    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    settings.AGENT_HOST_NAME = "exporting-node"
    settings.AGENT_NVML_MODULE = "tests.support.fake_nvml"
    settings.AGENT_HEARTBEAT_SECONDS = 3600
    settings.AGENT_GPU_METRICS_SOURCE = "nvml"
    settings.AGENT_METRICS_ADDRESS, settings.AGENT_METRICS_PORT = "127.0.0.1", port
    settings.METRICS_BEARER_TOKEN = ""
    settings.MODEL_STORE = tmp_path / "store"
    agent.start_agent()
    try:
        assert Host.objects.get(name="exporting-node").metrics_address == f"127.0.0.1:{port}"
        found = samples(scrape(f"127.0.0.1:{port}"))
        assert only(found, "llmdeploy_gpu_sm_clock_mhz").labels == {**GPU, "host": "exporting-node"}
        assert only(found, "llmdeploy_agent_info").labels["version"] == agent.AGENT_VERSION
        assert only(found, "llmdeploy_model_store_size_bytes").value == shutil.disk_usage(tmp_path / "store").total
    finally:
        agent.stop_agent()
    with pytest.raises(ConnectionRefusedError):  # stopped with the agent
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_on_its_own_machine_the_agent_serves_its_processes_job_and_download_counts(settings, tmp_path):
    """AGENT_METRICS_PROCESS_COUNTERS: a GPU host's jobs are timed and its downloads counted into its own directory;
    the exporter serves them, as the console's /metrics does for the processes beside it."""
    from prometheus_client import Counter, values

    settings.AGENT_METRICS_PROCESS_COUNTERS = True
    settings.PROMETHEUS_MULTIPROC_DIR = str(tmp_path / "prom")
    (tmp_path / "prom").mkdir()
    # Another process of this host (a Celery worker process) wrote its count there.
    writer = values.MultiProcessValue(lambda: "gpu-node-1-4242")
    old_class, old_env = values.ValueClass, os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = settings.PROMETHEUS_MULTIPROC_DIR
    values.ValueClass = writer
    try:
        Counter("llmdeploy_download_bytes", "Model file bytes downloaded.", registry=None).inc(1234)
    finally:
        values.ValueClass = old_class
        if old_env is None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        else:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = old_env
    started = start_exporter("gpu-node-1", "127.0.0.1", 0, nvml=fake_nvml, token="", model_store=tmp_path)
    assert started is not None
    server, address = started
    try:
        found = samples(scrape(address))
        assert only(found, "llmdeploy_download_bytes_total").value == 1234
        assert "llmdeploy_gpu_temperature_celsius" in found  # beside the GPU series
        settings.AGENT_METRICS_PROCESS_COUNTERS = False
    finally:
        server.shutdown()
        server.server_close()
    started = start_exporter("gpu-node-1", "127.0.0.1", 0, nvml=fake_nvml, token="", model_store=tmp_path)
    server, address = started
    try:
        assert "llmdeploy_download_bytes_total" not in samples(scrape(address))  # off: the console reads them
    finally:
        server.shutdown()
        server.server_close()
