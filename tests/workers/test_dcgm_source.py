"""GPU readings from an NVIDIA DCGM exporter's text (workers.dcgm), and the agent in dcgm mode."""

from __future__ import annotations

import logging
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support.fixtures import FIXTURES
from workers.dcgm import DcgmReader, exporter_address, parse_dcgm
from workers.nvml import GpuTelemetry

REAL = (FIXTURES / "dcgm" / "rtx4000ada-dcgm-exporter-4.prom").read_text()
UUID = "GPU-a8394b51-c086-568a-9f1a-c1e1c934c44c"
NO_XID = 'err_code="0",err_msg="No Error",namespace="default",pod="cuda-75454ffb9f-8ljq7",pod_uid=""} 0'


def with_xid(text: str, xid: int) -> str:
    """The real text with the GPU's last XID changed, the way dcgm-exporter 4 labels one."""
    assert NO_XID in text
    return text.replace(NO_XID, NO_XID.replace('"0"', f'"{xid}"', 1).replace("No Error", "an XID")[:-1] + str(xid))


def extra_fields(values: dict[str, float]) -> str:
    """Series this exporter's default configuration did not export, with the real text's labels."""
    labels = re.search(r"^DCGM_FI_DEV_GPU_TEMP(\{.*\})", REAL, re.MULTILINE).group(1)
    return "".join(f"# TYPE {name} gauge\n{name}{labels} {value}\n" for name, value in values.items())


def test_the_real_exporter_text_maps_to_a_reading():
    readings, last_xid = parse_dcgm(REAL)
    assert readings == [
        GpuTelemetry(
            index=0,
            uuid=UUID,
            utilization=0.0,
            memory_used=1 * 1024 * 1024,
            memory_total=(20015 + 1 + 457) * 1024 * 1024,  # free + used + reserved
            temperature=48.0,
            power_w=40.979,
            sm_clock_mhz=2310.0,
            memory_clock_mhz=9001.0,
            remapped_rows_correctable=0,  # counters: the parser calls their samples *_total
            remapped_rows_uncorrectable=0,
            remapped_rows_failed=False,
        )
    ]
    assert last_xid == {0: 0}


def test_health_fields_map_where_the_exporter_sends_them():
    text = REAL + extra_fields(
        {
            "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": 12,
            "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": 2,
            "DCGM_FI_DEV_RETIRED_SBE": 4,
            "DCGM_FI_DEV_RETIRED_DBE": 1,
            "DCGM_FI_DEV_RETIRED_PENDING": 1,
            "DCGM_FI_DEV_ROW_REMAP_PENDING": 1,
            "DCGM_FI_DEV_POWER_MGMT_LIMIT": 130,
            "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS": 0x40,
        }
    )
    (reading,), _ = parse_dcgm(with_xid(text, 79))
    assert (reading.ecc_corrected, reading.ecc_uncorrected) == (12, 2)
    assert (reading.retired_pages_single, reading.retired_pages_double, reading.retired_pages_pending) == (4, 1, True)
    assert reading.remapped_rows_pending is True and reading.remapped_rows_failed is False
    assert (reading.power_limit_w, reading.throttle_reasons) == (130.0, 0x40)
    assert parse_dcgm(with_xid(text, 79))[1] == {0: 79}


class Exporter:
    """A DCGM exporter stand-in over real HTTP serving whatever text the test sets."""

    def __init__(self) -> None:
        self.text = REAL
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = exporter.text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def dcgm_exporter():
    exporter = Exporter()
    yield exporter
    exporter.close()


def test_an_xid_is_reported_once_when_the_last_xid_changes(dcgm_exporter, caplog):
    reader = DcgmReader(dcgm_exporter.url)
    assert reader.read()[0].xids == ()
    dcgm_exporter.text = with_xid(REAL, 79)
    assert reader.read()[0].xids == (79,)
    assert reader.read()[0].xids == ()  # the same last XID: already reported
    dcgm_exporter.text = with_xid(REAL, 48)
    assert reader.read()[0].xids == (48,)
    assert reader.read()[0].temperature == 48.0

    dcgm_exporter.close()
    with caplog.at_level(logging.WARNING, logger="workers.dcgm"):
        assert reader.read() == []  # an exporter that is gone: no readings, and the heartbeat goes on
    assert any("did not answer" in r.getMessage() for r in caplog.records)


def test_a_standing_xid_is_reported_at_the_first_reading(dcgm_exporter):
    dcgm_exporter.text = with_xid(REAL, 79)
    assert DcgmReader(dcgm_exporter.url).read()[0].xids == (79,)


def test_prometheus_is_given_the_dcgm_exporters_address():
    assert exporter_address("http://127.0.0.1:9400/metrics") == f"{socket.getfqdn()}:9400"
    assert exporter_address("http://gpu-node-1.lab:9400/metrics") == "gpu-node-1.lab:9400"
    assert exporter_address("https://gpu-node-1.lab/metrics") == "gpu-node-1.lab:443"


@pytest.mark.django_db(transaction=True)  # start_agent closes the connection, as in a worker
def test_in_dcgm_mode_the_agent_reports_dcgm_readings_and_serves_no_gpu_series(settings, dcgm_exporter, tmp_path):
    from deployments.inventory.models import Host
    from workers import agent

    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    settings.AGENT_HOST_NAME = "dcgm-node"
    settings.AGENT_NVML_MODULE = "tests.support.fake_nvml"
    settings.AGENT_HEARTBEAT_SECONDS = 3600  # the test plays the heartbeat itself
    settings.AGENT_GPU_METRICS_SOURCE = "dcgm"
    settings.DCGM_EXPORTER_URL = dcgm_exporter.url
    settings.AGENT_METRICS_ADDRESS, settings.AGENT_METRICS_PORT = "127.0.0.1", port
    settings.MODEL_STORE = tmp_path / "store"
    dcgm_exporter.text = with_xid(REAL, 79)
    agent.start_agent()
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        host = Host.objects.get(name="dcgm-node")
        assert host.metrics_address == f"{socket.getfqdn()}:{dcgm_exporter.server.server_address[1]}"
        gpu = host.gpus.get(index=0)  # the H200 NVML sees; DCGM's reading of GPU 0 goes with it
        assert gpu.telemetry["temperature"] == 48.0 and gpu.telemetry["xids"] == [79]
        agent.report_once("dcgm-node")
        assert host.gpus.get(index=0).telemetry["xids"] == []  # reported once
    finally:
        agent.stop_agent()
