"""The Jobs pages: every job a viewer may see with its target, state, progress, who and how long; filters and search;
one job's facts and its live log, offered only to those who may read it (the API's rules)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from console import roles
from deployments.models import Job
from tests.factories import DeploymentFactory, JobFactory, ModelArtifactFactory, TeamFactory, UserFactory

pytestmark = pytest.mark.django_db


def text(response) -> str:
    return response.content.decode().replace("\xa0", " ")  # filesizeformat's non-breaking spaces


def rows(page: str) -> list[int]:
    return [int(pk) for pk in re.findall(r'<tr data-job="(\d+)"', page)]


@pytest.fixture
def jobs(admin):
    """A running download with progress, a failed serve job an hour long, and an import nobody started."""
    artifact = ModelArtifactFactory(repo__repo_id="acme/llama-tiny")
    deployment = DeploymentFactory(name="chat-prod")
    started = timezone.now() - timedelta(hours=2)
    download = JobFactory(
        target=artifact,
        status=Job.Status.RUNNING,
        actor=admin,
        started_at=timezone.now() - timedelta(seconds=75),
        progress={"done": 600 * 1024**2, "total": 1024**3},
    )
    serve = JobFactory(
        kind=Job.Kind.SERVE,
        target=deployment,
        status=Job.Status.FAILED,
        actor=admin,
        failure_cause="oom",
        started_at=started,
        finished_at=started + timedelta(hours=1, minutes=5),
    )
    imported = JobFactory(kind=Job.Kind.IMPORT, target=artifact, status=Job.Status.SUCCEEDED)
    return {"download": download, "serve": serve, "import": imported, "artifact": artifact, "deployment": deployment}


def test_the_list_shows_every_job_with_target_state_progress_who_and_duration(client, engineer, jobs):
    client.force_login(engineer)
    page = text(client.get("/jobs/"))
    assert rows(page) == [jobs["import"].pk, jobs["serve"].pk, jobs["download"].pk]  # newest first
    assert f'href="/deployments/{jobs["deployment"].pk}/"' in page and "chat-prod" in page
    assert f'href="/models/{jobs["artifact"].pk}/"' in page and "acme/llama-tiny" in page
    assert "58% · 600.0 MB / 1.0 GB" in page
    assert "1 h 05 min" in page  # the failed serve job ran 65 minutes
    assert re.search(r"1 min 1\d s", page)  # the running download, so far
    assert "the console" in page  # the import nobody started
    assert "<code>oom</code>" in page
    assert 'data-nav="jobs"' in page


def test_filters_and_search_narrow_the_list(client, engineer, jobs, admin):
    client.force_login(engineer)
    assert rows(client.get("/jobs/?kind=serve").content.decode()) == [jobs["serve"].pk]
    assert rows(client.get("/jobs/?status=running").content.decode()) == [jobs["download"].pk]
    by_target = client.get("/jobs/?target_type=deployments.modelartifact").content.decode()
    assert rows(by_target) == [jobs["import"].pk, jobs["download"].pk]
    by_who = client.get(f"/jobs/?actor={admin.username}").content.decode()
    assert rows(by_who) == [jobs["serve"].pk, jobs["download"].pk]
    assert rows(client.get("/jobs/?q=chat-prod").content.decode()) == [jobs["serve"].pk]
    assert rows(client.get("/jobs/?q=llama-tiny").content.decode()) == [jobs["import"].pk, jobs["download"].pk]
    assert rows(client.get(f"/jobs/?q=%23{jobs['serve'].pk}").content.decode()) == [jobs["serve"].pk]
    assert rows(client.get("/jobs/?q=" + "9" * 40).content.decode()) == []  # no overflow, just nothing
    empty = client.get("/jobs/?kind=delete").content.decode()
    assert 'id="jobs-empty"' in empty and "No job matches these filters." in empty


def test_the_pager_keeps_the_filters(client, engineer):
    for _ in range(27):
        JobFactory(kind=Job.Kind.IMPORT)
    client.force_login(engineer)
    page = client.get("/jobs/?kind=import").content.decode()
    assert len(rows(page)) == 25 and "?page=2&amp;kind=import" in page
    assert len(rows(client.get("/jobs/?kind=import&page=2").content.decode())) == 2


def test_an_empty_console_says_where_jobs_come_from(client, auditor):
    client.force_login(auditor)
    page = client.get("/jobs/").content.decode()
    assert 'id="jobs-empty"' in page and "No jobs yet." in page


def test_the_detail_shows_the_facts_and_the_live_log(client, engineer, jobs):
    client.force_login(engineer)
    job = jobs["download"]
    page = text(client.get(f"/jobs/{job.pk}/"))
    assert f'data-ws="/ws/jobs/{job.pk}/"' in page and "console/job.js" in page
    assert 'data-active="1"' in page
    assert "acme/llama-tiny" in page and "58% · 600.0 MB / 1.0 GB" in page
    failed = client.get(f"/jobs/{jobs['serve'].pk}/").content.decode()
    assert 'id="job-failure"' in failed and "1 h 05 min" in failed


def test_a_deployments_job_log_is_offered_only_to_its_readers(client, admin):
    """The page follows the log's rule (deployments.jobs.selectors): an engineer of another team sees the job, not
    its log; the owning team's engineer gets the live log; the failure's evidence lines stay with the log."""
    team = TeamFactory()
    job = JobFactory(
        kind=Job.Kind.SERVE,
        target=DeploymentFactory(team=team),
        status=Job.Status.FAILED,
        failure_detail="The server ran out of memory.\nInput: a secret prompt",
    )
    client.force_login(UserFactory(roles=[roles.ENGINEER]))
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert 'id="log-hidden"' in page and f"ws/jobs/{job.pk}/" not in page and "a secret prompt" not in page
    insider = UserFactory(roles=[roles.ENGINEER])
    insider.groups.add(team)
    client.force_login(insider)
    assert f'data-ws="/ws/jobs/{job.pk}/"' in client.get(f"/jobs/{job.pk}/").content.decode()


def test_without_view_no_jobs_page_and_an_unknown_job_is_a_404(client, nobody, engineer):
    client.force_login(nobody)
    assert client.get("/jobs/").status_code == 403
    client.force_login(engineer)
    assert client.get("/jobs/999999/").status_code == 404
