"""A dataset version's statistics as a console job: an engineer who may train on the dataset asks for them with a
model's tokenizer, a real Celery worker on that model's host fetches the version over the internal route (a live
server), runs workers/jobs/dataset_stats.py in the ML environment through the process runtime, and the figures land
on the version, equal to what the program computes on the same file run by hand. The engineer reads them on the
dataset page and in the API; a canary string in every row appears in nothing the engineer reads (page, API, job
log). Auditors see the figures but cannot start a job; users who may not use the dataset get 403 or 404; a second
request while one is pending is refused.

Timings on 2 shared cores: tiny model ~8 s (once), worker start ~10 s, the job ~5-8 s (transformers' import), the
program by hand ~5 s."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from audit.models import AuditEvent
from console.errors import ApplicationError
from deployments.datasets.stats import stats_start
from deployments.models import Host, Job, JobLogLine
from tests.conftest import _start_worker, _test_database_url, _wait_and_stop, need
from tests.deployments.datasets.conftest import api, jsonl
from tests.deployments.datasets.test_fetch_route import make_version
from tests.factories import HostFactory, JobFactory, ModelArtifactFactory, UserFactory
from tests.support.job_program import run_job
from tests.support.serve_process import make_model, ml_python
from workers.runtimes.base import LABEL_JOB
from workers.runtimes.process import ProcessRuntime

CANARY = "CANARY-91c0d4e7-stats-never-shown"
WORDS = ["the", "model", "server", "tokens", "gpu", "memory", "cache", "batch", "answer", "question", "data", "layer"]
# 23 rows of varied lengths: an eval share of 0.1 is 2.3 rows, rounded up to 3.
RECORDS = [
    {
        "prompt": " ".join(WORDS[(i * 5 + k) % len(WORDS)] for k in range(2 + i % 9)) + f" {CANARY}",
        "completion": " " + " ".join(WORDS[(i + k) % len(WORDS)] for k in range(1 + (i * 7) % 13)),
        "id": i,
    }
    for i in range(23)
]


def stats_url(dataset_id: int, number: int = 1) -> str:
    return f"/api/v1/datasets/{dataset_id}/versions/{number}/stats/"


def page(user, dataset_id: int) -> str:
    client = Client()
    client.force_login(user)
    response = client.get(f"/datasets/{dataset_id}/")
    assert response.status_code == 200
    return response.content.decode()


@pytest.fixture
def model_dir(tmp_path_factory) -> Path:
    need(ml_python() is not None, "the ML environment (make ml-env) is needed to count tokens")
    return make_model(tmp_path_factory.getbasetemp() / "stats-tiny-model")


@pytest.fixture
def setup(settings, tmp_path, admin, engineer, model_dir):
    settings.DATASET_STORE = tmp_path / "datasets"
    team = Group.objects.create(name="stats-team")
    team.user_set.add(engineer)
    from deployments.datasets import services as datasets

    dataset = datasets.dataset_create(actor=admin, name="stats-codes", team=team)
    version = make_version(admin, dataset, jsonl(RECORDS))
    host = HostFactory(name=f"st-{os.getpid()}-{time.monotonic_ns() % 10**6}")
    tokenizer = ModelArtifactFactory(host=host, path=str(model_dir), repo__repo_id="tests/tiny-stats")
    return {"dataset": dataset, "version": version, "host": host, "tokenizer": tokenizer}


@pytest.fixture
def worker(setup, settings, tmp_path, live_server, redis_url):
    env = {
        "REDIS_URL": redis_url,
        "DATABASE_URL": _test_database_url(),
        "CONSOLE_INTERNAL_URL": live_server.url,
        "CHECKPOINT_DIR": str(tmp_path / "work"),
        "DATASET_CACHE_DIR": str(tmp_path / "agent-cache"),
        "JOB_CANCEL_POLL_SECONDS": "0.2",
    }
    started = []

    def start():
        queue = setup["host"].queue
        process, log = _start_worker(env, "stats-worker", queue, pool="threads")
        stopper = _wait_and_stop(process, log, queue)
        next(stopper)
        started.append(stopper)
        return log

    yield start
    for stopper in started:
        next(stopper, None)
    for handle in ProcessRuntime().find({}):
        if handle.labels.get(LABEL_JOB):
            ProcessRuntime().remove(handle)


def expected_figures(setup, tmp_path) -> dict:
    """The program run by hand on the stored file with the same tokenizer."""
    from deployments.datasets import storage

    version = setup["version"]
    spec = {"dataset": str(storage.absolute(version.path)), "format": "jsonl", "tokenizer": setup["tokenizer"].path}
    run = run_job("dataset_stats", spec, tmp_path / "by-hand")
    assert run.code == 0, run.stderr[-3000:]
    return run.one("result")


def wait_for_end(job: Job, log, timeout: float = 240) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job.refresh_from_db()
        if job.status in Job.Status.terminal():
            return job
        time.sleep(0.3)
    pytest.fail(f"the stats job did not end\n{Path(log.name).read_text()[-4000:]}")


@pytest.mark.django_db(transaction=True)
def test_a_worker_computes_the_statistics_the_engineer_reads_on_the_page_and_in_the_api_without_a_row(
    setup, worker, engineer, auditor, tmp_path
):
    dataset, version = setup["dataset"], setup["version"]
    client = api(engineer)
    started = client.post(stats_url(dataset.pk), {"tokenizer": setup["tokenizer"].pk}, format="json")
    assert started.status_code == 202, started.content
    job = Job.objects.get(pk=started.json()["job"])
    assert job.kind == Job.Kind.DATASET_STATS and job.queue == setup["host"].queue
    assert job.params == {"dataset_version_id": version.pk, "tokenizer_artifact_id": setup["tokenizer"].pk}

    # No worker yet: the job waits, the page links to it, and a second request is refused.
    again = client.post(stats_url(dataset.pk), {"tokenizer": None}, format="json")
    assert again.status_code == 409 and again.json()["job"] == job.pk, again.content
    assert "being computed already" in again.json()["version"][0]
    assert f'href="/jobs/{job.pk}/"' in page(engineer, dataset.pk)
    assert client.get(f"/api/v1/datasets/{dataset.pk}/versions/1/").json()["stats"]["running_job"] == job.pk

    log = worker()
    job = wait_for_end(job, log)
    lines = "\n".join(JobLogLine.objects.filter(job=job).values_list("text", flat=True))
    assert job.status == Job.Status.SUCCEEDED, (job.failure_cause, job.failure_detail, lines[-3000:])

    expected = expected_figures(setup, tmp_path)
    version.refresh_from_db()
    figures = version.stats
    assert figures["rows"] == expected["rows"] == 23
    assert figures["token_lengths"] == expected["token_lengths"]
    assert sum(figures["token_lengths"]["counts"]) == 23
    assert figures["split"] == expected["split"] == {"train": 20, "eval": 3, "seed": 42, "eval_fraction": 0.1}
    assert figures["columns"] == expected["columns"] and set(figures["columns"]) == {"prompt", "completion", "id"}
    assert figures["tokenizer"] == f"tests/tiny-stats@{setup['tokenizer'].repo.commit}"
    assert figures["job"] == job.pk and figures["computed_at"]

    # The API: the version's stats, as stored, and nothing running.
    shown = client.get(f"/api/v1/datasets/{dataset.pk}/versions/1/")
    assert shown.status_code == 200
    body = shown.json()["stats"]
    assert body["status"] == "computed" and body["running_job"] is None
    assert body["token_lengths"] == expected["token_lengths"] and body["rows"] == 23

    # The page: rows, split, each bin's bar, the percentiles.
    html = page(engineer, dataset.pk)
    lengths = expected["token_lengths"]
    assert "data-stats-rows>23<" in html
    assert html.count("data-bin=") == len(lengths["counts"])
    for low, rows in zip(lengths["bins"], lengths["counts"], strict=False):
        assert f'data-bin="{low}" data-rows="{rows}"' in html
    assert f"p90 {lengths['p90']}" in html and f"max {lengths['max']}" in html
    assert "20 train, 3 eval" in html

    # The canary is in every row and in nothing the engineer reads.
    log_api = client.get(f"/api/v1/jobs/{job.pk}/log/?limit=1000")
    assert log_api.status_code == 200 and len(log_api.json()["items"]) > 3
    job_page = Client()
    job_page.force_login(engineer)
    read = [
        html,
        shown.content.decode(),
        log_api.content.decode(),
        client.get(f"/api/v1/jobs/{job.pk}/").content.decode(),
        job_page.get(f"/jobs/{job.pk}/").content.decode(),
        lines,
        json.dumps(job.result),
    ]
    assert not [text for text in read if CANARY in text]
    assert not AuditEvent.objects.filter(detail__contains=CANARY).exists()
    actions = set(AuditEvent.objects.filter(target_id=str(version.pk)).values_list("action", flat=True))
    assert {"dataset.stats_requested", "dataset.stats_computed", "dataset.fetched"} <= actions

    # The auditor sees them, and may not start a job.
    assert "data-stats-rows>23<" in page(auditor, dataset.pk)
    assert api(auditor).get(f"/api/v1/datasets/{dataset.pk}/versions/1/").json()["stats"]["rows"] == 23
    assert api(auditor).post(stats_url(dataset.pk), {"tokenizer": None}, format="json").status_code == 403


@pytest.mark.django_db
def test_who_may_start_statistics(setup, engineer, auditor, nobody, admin):
    dataset, tokenizer = setup["dataset"], setup["tokenizer"]
    outsider = UserFactory(username="olga-other-team", roles=["engineer"])
    body = {"tokenizer": tokenizer.pk}
    assert api(auditor).post(stats_url(dataset.pk), body, format="json").status_code == 403
    assert api(nobody).post(stats_url(dataset.pk), body, format="json").status_code == 403
    assert api(outsider).post(stats_url(dataset.pk), body, format="json").status_code == 404  # not even seen
    assert api(engineer).post(stats_url(dataset.pk, 7), body, format="json").status_code == 404
    for user, status in ((auditor, 403), (nobody, 403), (outsider, 404)):
        client = Client()
        client.force_login(user)
        assert client.post(f"/datasets/{dataset.pk}/versions/1/stats/", {"tokenizer": ""}).status_code == status
    assert not Job.objects.filter(kind=Job.Kind.DATASET_STATS).exists()
    # The auditor's page has no form; the engineer's lists the tokenizer's model.
    assert "data-stats-form" not in page(auditor, dataset.pk)
    assert f'<option value="{tokenizer.pk}">tests/tiny-stats on {setup["host"].name}</option>' in page(
        engineer, dataset.pk
    )
    # An admin (manage_datasets) may, through the page.
    client = Client()
    client.force_login(admin)
    answer = client.post(f"/datasets/{dataset.pk}/versions/1/stats/", {"tokenizer": str(tokenizer.pk)})
    assert answer.status_code == 302 and answer["Location"].endswith(f"/datasets/{dataset.pk}/#version-1")
    assert Job.objects.filter(kind=Job.Kind.DATASET_STATS, actor=admin, queue=setup["host"].queue).count() == 1


@pytest.mark.django_db
def test_without_a_tokenizer_the_job_goes_to_the_first_online_process_host_and_none_is_a_clear_error(setup, engineer):
    version, tokenizer_host = setup["version"], setup["host"]
    Host.objects.update(status=Host.Status.OFFLINE)
    answer = api(engineer).post(stats_url(setup["dataset"].pk), {"tokenizer": None}, format="json")
    assert answer.status_code == 400
    assert "No online host with the process runtime" in answer.json()["tokenizer"][0]
    HostFactory(name="zz-last")
    HostFactory(name="aa-first", runtime=Host.Runtime.DOCKER)
    chosen = HostFactory(name="ab-second")
    job = stats_start(actor=engineer, version=version, tokenizer=None)
    assert job.queue == chosen.queue != tokenizer_host.queue
    assert job.params["tokenizer_artifact_id"] is None


@pytest.mark.django_db
def test_a_tokenizer_on_a_docker_host_or_not_ready_is_refused_by_field(setup, engineer):
    version, tokenizer = setup["version"], setup["tokenizer"]
    docker = ModelArtifactFactory(host=HostFactory(runtime=Host.Runtime.DOCKER), repo__repo_id="tests/other")
    answer = api(engineer).post(stats_url(setup["dataset"].pk), {"tokenizer": docker.pk}, format="json")
    assert answer.status_code == 400 and "process runtime" in answer.json()["tokenizer"][0]
    missing = api(engineer).post(stats_url(setup["dataset"].pk), {"tokenizer": 10**9}, format="json")
    assert missing.status_code == 400 and missing.json() == {"tokenizer": ["No such model."]}
    tokenizer.status = tokenizer.Status.DOWNLOADING
    tokenizer.save()
    with pytest.raises(ApplicationError, match="not ready"):
        stats_start(actor=engineer, version=version, tokenizer=tokenizer)
    assert not Job.objects.filter(kind=Job.Kind.DATASET_STATS).exists()


@pytest.mark.django_db
def test_a_failed_statistics_job_says_why_on_the_page_and_in_the_api_and_a_new_one_may_start(setup, engineer):
    dataset, version = setup["dataset"], setup["version"]
    failed = JobFactory(
        kind=Job.Kind.DATASET_STATS,
        status=Job.Status.FAILED,
        target=dataset,
        params={"dataset_version_id": version.pk, "tokenizer_artifact_id": setup["tokenizer"].pk},
        failure_cause="no_chat_template",
        failure_detail="The tokenizer at /models/x has no chat template, which a chat dataset needs.\nevidence line",
    )
    html = page(engineer, dataset.pk)
    assert f"The last statistics job ({failed.pk}) failed: The tokenizer at /models/x has no chat template" in html
    assert "evidence line" not in html and "data-stats-missing" in html
    body = api(engineer).get(f"/api/v1/datasets/{dataset.pk}/versions/1/").json()["stats"]
    assert body["status"] == "not_computed" and body["running_job"] is None
    assert body["failed_job"] == {
        "id": failed.pk,
        "cause": "no_chat_template",
        "message": "The tokenizer at /models/x has no chat template, which a chat dataset needs.",
    }
    started = api(engineer).post(stats_url(dataset.pk), {"tokenizer": setup["tokenizer"].pk}, format="json")
    assert started.status_code == 202
    body = api(engineer).get(f"/api/v1/datasets/{dataset.pk}/versions/1/").json()["stats"]
    assert body["running_job"] == started.json()["job"] and body["failed_job"] is None
