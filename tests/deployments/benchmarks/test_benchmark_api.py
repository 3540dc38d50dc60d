"""Issue 17: benchmark runs through the API: who may start one (use_deployment on a running deployment), the
workload checked by the load generator's own rules, steps stored from the generator's events as they arrive
(every figure its own column), exported as CSV and JSON, cancel audited, and the run's key revoked at the end."""

from __future__ import annotations

import csv
import io
import json

import pytest
from django.db import connection

from audit.models import AuditEvent
from console import roles
from console.accounts.services.access import object_grant
from console.errors import ApplicationError
from deployments.benchmarks import services
from deployments.benchmarks.workload import check_workload
from deployments.models import BenchmarkRun, Deployment, InferenceKey, Job
from tests.factories import DeploymentSpecFactory, HostFactory
from workers.handlers.benchmark import process_lines
from workers.jobs.bench_figures import StreamRecord, step_figures
from workers.jobs.protocol import Events

pytestmark = pytest.mark.django_db
URL = "/api/v1/benchmarks/"
WORKLOAD = {"prompt_tokens": 32, "output_tokens": 16, "sweep": "concurrency", "levels": [1, 4], "duration_s": 5}


@pytest.fixture
def target(admin, engineer):
    """A running deployment the engineer may use (a grant), on a host with a queue."""
    spec = DeploymentSpecFactory(current=True, deployment__name="bench-target")
    deployment = spec.deployment
    deployment.state, deployment.host = Deployment.State.RUNNING, HostFactory(name="bench-host")
    deployment.save(update_fields=["state", "host"])
    object_grant(actor=admin, grantee=engineer, action=roles.USE_DEPLOYMENT, target=deployment)
    return deployment


def _start(api, user, deployment, workload=WORKLOAD, expected=201):
    return api(user).post(URL, {"deployment": deployment.pk, "workload": workload}, expected=expected)


def test_starting_needs_use_deployment_on_the_target(api, target, engineer, auditor, nobody, admin):
    other = DeploymentSpecFactory(current=True, deployment__name="not-granted").deployment
    Deployment.objects.filter(pk=other.pk).update(state=Deployment.State.RUNNING, host=target.host)
    # The engineer sees every deployment (global view) but uses only the granted one.
    assert _start(api, engineer, other, expected=403).status_code == 403
    _start(api, auditor, target, expected=403)
    _start(api, nobody, target, expected=403)
    _start(api, None, target, expected=401)
    assert not BenchmarkRun.objects.exists() and not Job.objects.filter(kind=Job.Kind.BENCHMARK).exists()

    body = _start(api, engineer, target).data
    run = BenchmarkRun.objects.get(pk=body["id"])
    assert body["state"] == "pending" and body["deployment_name"] == "bench-target" and body["spec_version"] == 1
    assert run.spec_id == target.spec_id and run.created_by == engineer
    job = run.job
    assert job.kind == "benchmark" and job.queue == target.host.queue
    assert job.params["model"] == "bench-target" and job.params["base_url"].startswith("http")
    # The key: the starter's, this deployment only, living about as long as the sweep (2 x 5 s + an hour).
    key = run.inference_key
    assert key.user == engineer and list(key.deployments.all()) == [target] and not key.all_deployments
    assert 3600 <= (key.expires_at - run.created_at).total_seconds() <= 3700
    # Its raw value reaches the agent from the database, encrypted; nowhere in plain text.
    raw = run.api_key.reveal()
    assert raw.startswith("llk_") and InferenceKey.objects.usable().filter(pk=key.pk).exists()
    with connection.cursor() as cursor:
        cursor.execute("SELECT api_key FROM deployments_benchmarkrun WHERE id = %s", [run.pk])
        assert raw not in cursor.fetchone()[0]
    assert raw not in json.dumps(job.params) and raw not in json.dumps(body)
    started = AuditEvent.objects.get(action="benchmark.started")
    assert started.actor_name == engineer.username and raw not in started.detail and '"bench-target"' in started.detail
    _start(api, admin, other)  # an admin uses every deployment


@pytest.mark.parametrize(
    ("workload", "field"),
    [
        ("not an object", "workload"),
        ({**WORKLOAD, "levels": []}, "levels"),
        ({**WORKLOAD, "levels": [0]}, "levels"),
        ({**WORKLOAD, "levels": ["many"]}, "levels"),
        ({**WORKLOAD, "sweep": "batch"}, "sweep"),
        ({**WORKLOAD, "dialect": "grpc"}, "dialect"),
        ({**WORKLOAD, "colour": "blue"}, "workload"),
        ({k: v for k, v in WORKLOAD.items() if k != "duration_s"}, "duration_s"),
        ({**WORKLOAD, "requests": 10}, "duration_s"),
        ({**WORKLOAD, "prompt_tokens": -3}, "prompt_tokens"),
        ({**WORKLOAD, "output_tokens": "long"}, "output_tokens"),
        ({**WORKLOAD, "max_concurrency": 8}, "max_concurrency"),
        ({**WORKLOAD, "sampling": {"top_p": 7}}, "sampling"),
        ({**WORKLOAD, "seed": 10**400}, "workload"),  # too large for a float: refused, not a server error
    ],
)
def test_a_workload_the_generator_would_refuse_is_a_400_naming_the_field(api, target, engineer, workload, field):
    response = _start(api, engineer, target, workload=workload, expected=400)
    assert any(name == field or name.startswith(f"{field}.") for name in response.data), response.data
    assert not BenchmarkRun.objects.exists() and not InferenceKey.objects.exists()


def test_a_workload_with_text_the_database_cannot_store_is_refused_by_the_service_too():
    # The API's parser already refuses NUL; the service stands on its own (forms, other callers).
    with pytest.raises(ApplicationError) as refused:
        check_workload({**WORKLOAD, "prompt_tokens": {"percentiles": {"50": 32}, "note\x00": 1}})
    assert refused.value.field == "workload"


def test_a_rate_sweep_is_accepted_and_only_a_running_deployment_can_be_benchmarked(api, target, engineer):
    rates = {**WORKLOAD, "sweep": "rate", "levels": [0.5, 2], "max_concurrency": 64, "duration_s": None, "requests": 20}
    run = BenchmarkRun.objects.get(pk=_start(api, engineer, target, workload=rates).data["id"])
    assert run.workload["levels"] == [0.5, 2] and run.workload["requests"] == 20
    assert 86_000 < (run.inference_key.expires_at - run.created_at).total_seconds() <= 86_401  # count-bound: a day
    Deployment.objects.filter(pk=target.pk).update(state=Deployment.State.STOPPED)
    assert "deployment" in _start(api, engineer, target, expected=400).data
    api(engineer).post(URL, {"deployment": 2**31 - 1, "workload": WORKLOAD}, expected=404)


def _record(index: int, start_ms: int, *, error: str | None = None) -> StreamRecord:
    ms = 1_000_000
    record = StreamRecord(index=index, start_ns=start_ms * ms, prompt_tokens=32)
    if error:
        record.error, record.status, record.end_ns = error, 503, (start_ms + 5) * ms
        return record
    record.chunks = [((start_ms + 20 + 10 * i) * ms, 1) for i in range(4)]  # TTFT 20 ms, ITL 10 ms
    record.end_ns, record.status = (start_ms + 51) * ms, 200
    return record


def _generator_output() -> list[str]:
    """What workers/jobs/loadgen.py prints for two steps (the figures from bench_figures), plus a stray line."""
    out = io.StringIO()
    events = Events(out)
    events.log("2 steps against http://gateway")
    clean = [_record(i, 100 * i) for i in range(4)]
    events.metric(step=0, label="concurrency 1", concurrency=1, **step_figures(clean, window_start_ns=0,
                  window_end_ns=400_000_000))  # fmt: skip
    mixed = [_record(0, 0), _record(1, 10, error="http_503")]
    events.metric(step=1, label="concurrency 4", concurrency=4, **step_figures(mixed, window_start_ns=0,
                  window_end_ns=100_000_000))  # fmt: skip
    return [*out.getvalue().splitlines(), "a library's warning on stdout"]


def test_steps_from_the_generators_events_are_rows_shown_and_exported(api, target, engineer):
    run = BenchmarkRun.objects.get(pk=_start(api, engineer, target).data["id"])
    assert process_lines(run, _generator_output()) == 2
    assert process_lines(run, _generator_output()) == 2  # a retried worker re-reads: replaced, not doubled
    detail = api(engineer).get(f"{URL}{run.pk}/").data
    first, second = detail["steps"]
    assert first["index"] == 0 and first["concurrency"] == 1 and first["requests"] == 4
    assert first["ttft_ms_p50"] == pytest.approx(20.0) and first["itl_ms_p99"] == pytest.approx(10.0)
    assert first["e2e_ms_p50"] == pytest.approx(51.0) and first["output_tokens_per_s"] > 0
    assert first["has_errors"] is False and first["errors"] == {}
    assert first["queue_size"] is None  # the server's metrics: not scraped in this run
    # A step with a failed request is marked, and its error counted by type (never averaged in).
    assert second["has_errors"] is True and second["errors"] == {"http_503": 1} and second["requests_failed"] == 1
    assert second["ttft_ms_p50"] == pytest.approx(20.0)

    response = api(engineer).get(f"{URL}{run.pk}/export.csv/")
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [row["index"] for row in rows] == ["0", "1"]
    assert float(rows[0]["ttft_ms_p99"]) == pytest.approx(20.0) and rows[1]["has_errors"] == "1"
    assert json.loads(rows[1]["errors"]) == {"http_503": 1} and rows[0]["queue_size"] == ""

    exported = json.loads(api(engineer).get(f"{URL}{run.pk}/export.json/").content)
    assert exported["workload"]["levels"] == [1, 4] and [s["label"] for s in exported["steps"]] == [
        "concurrency 1",
        "concurrency 4",
    ]
    listed = api(engineer).get(f"{URL}?deployment={target.pk}").data["results"]
    assert [item["id"] for item in listed] == [run.pk] and "steps" not in listed[0]
    assert api(engineer).get(f"{URL}?deployment=999999").data["results"] == []


def test_a_malformed_step_event_is_stored_as_far_as_it_is_sound(api, target, engineer):
    run = services.benchmark_start(actor=engineer, deployment=target, workload=WORKLOAD)
    odd = {"type": "metric", "time": 1, "step": 0, "label": "c\x00one", "ttft_ms_p50": "fast", "requests": -4}
    odd.update({"errors": {"bad\x00type": 2}, "stamps": "kernel", "lag": float("nan"), "detail": {"x": float("inf")}})
    assert process_lines(run, [json.dumps(odd), '{"type": "metric", "step": true}']) == 1
    step = run.steps.get()
    assert step.label == "cone" and step.ttft_ms_p50 is None and step.requests == 0
    assert step.errors == {"badtype": 2} and step.has_errors and step.extra == {"stamps": "kernel"}


def test_cancel_is_audited_and_the_end_revokes_the_runs_key(api, target, engineer, auditor):
    run = BenchmarkRun.objects.get(pk=_start(api, engineer, target).data["id"])
    api(auditor).post(f"{URL}{run.pk}/cancel/", expected=403)
    api(engineer).post(f"{URL}{run.pk}/cancel/", expected=202)
    assert Job.objects.get(pk=run.job_id).cancel_requested
    cancelled = AuditEvent.objects.get(action="benchmark.cancelled")
    assert cancelled.actor_name == engineer.username

    services.benchmark_finished(run, status=Job.Status.CANCELLED)
    run.refresh_from_db()
    assert run.state == "cancelled" and run.finished_at is not None and run.api_key is None
    assert not InferenceKey.objects.usable().filter(pk=run.inference_key_id).exists()
    assert AuditEvent.objects.filter(action="benchmark.finished").exists()
    assert "nothing to cancel" in str(api(engineer).post(f"{URL}{run.pk}/cancel/", expected=400).data)


def test_a_run_is_hidden_from_those_who_cannot_see_its_deployment(api, target, engineer, nobody):
    run = services.benchmark_start(actor=engineer, deployment=target, workload=WORKLOAD)
    api(nobody).get(f"{URL}{run.pk}/", expected=403)  # no view at all
    api(engineer).get(f"{URL}abc/", expected=404)
    api(engineer).get(f"{URL}{run.pk + 1000}/", expected=404)
