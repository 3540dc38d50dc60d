"""How a job's progress reads on the pages: a training job's as "step X of Y" with the time left while it runs, a
download's as sizes; and the job page offers the training curves (local scripts only) to those who read the log."""

from __future__ import annotations

import re

import pytest

from console import roles
from deployments.jobs.views import job_progress
from deployments.models import Job
from tests.factories import DeploymentFactory, JobFactory, ModelArtifactFactory, TeamFactory, UserFactory

pytestmark = pytest.mark.django_db

STEP_PROGRESS = {"step": 40, "total": 100, "eta_seconds": 160.0}


def text(response) -> str:
    return response.content.decode().replace("\xa0", " ")  # filesizeformat's non-breaking spaces


def plain(shown: dict) -> dict:
    return {key: value.replace("\xa0", " ") if isinstance(value, str) else value for key, value in shown.items()}


def shown_kinds(page: str) -> set[str]:
    """The progress kinds (steps, bytes) whose fields the detail page shows (not `hidden`)."""
    return {kind for kind, rest in re.findall(r'data-progress-kind="(\w+)"([^>]*)>', page) if "hidden" not in rest}


def finetune(**fields) -> Job:
    return JobFactory(kind=Job.Kind.FINETUNE, target=ModelArtifactFactory(), **fields)


def test_a_running_fine_tune_reads_step_x_of_y_with_the_time_left():
    job = finetune(status=Job.Status.RUNNING, progress=STEP_PROGRESS)
    assert job_progress(job) == {"percent": 40, "text": "step 40 of 100", "steps": True, "eta": "2 min 40 s"}


def test_a_finished_fine_tune_keeps_its_step_but_no_time_left():
    job = finetune(status=Job.Status.SUCCEEDED, progress={**STEP_PROGRESS, "step": 100, "eta_seconds": 0.0})
    assert job_progress(job) == {"percent": 100, "text": "step 100 of 100", "steps": True, "eta": ""}


@pytest.mark.parametrize(
    ("progress", "shown"),
    [
        ({}, {}),
        ({"step": 3, "total": 0}, {}),  # no total: no bar
        ({"step": 3, "total": "100"}, {}),
        ({"step": 250, "total": 200}, {"percent": 100, "text": "step 250 of 200", "steps": True, "eta": ""}),
        (
            {"step": 5, "total": 10, "eta_seconds": "soon"},
            {"percent": 50, "text": "step 5 of 10", "steps": True, "eta": ""},
        ),
        ({"step": True, "total": 10}, {"percent": 0, "text": "0 bytes / 10 bytes"}),  # not a step: sizes, as before
    ],
)
def test_odd_progress_shows_no_bar_or_a_bounded_one(progress, shown):
    assert plain(job_progress(finetune(status=Job.Status.RUNNING, progress=progress))) == shown


def test_a_download_still_reads_in_sizes():
    job = JobFactory(status=Job.Status.RUNNING, progress={"done": 600 * 1024**2, "total": 1024**3, "eta_s": 75})
    assert plain(job_progress(job)) == {"percent": 58, "text": "600.0 MB / 1.0 GB"}


def test_the_jobs_list_shows_steps_for_a_fine_tune(client, engineer):
    job = finetune(status=Job.Status.RUNNING, progress=STEP_PROGRESS)
    client.force_login(engineer)
    page = text(client.get("/jobs/"))
    row = page[page.index(f'<tr data-job="{job.pk}"') :]
    row = row[: row.index("</tr>")]
    assert "40% · step 40 of 100" in row and "bytes" not in row


def test_the_job_page_shows_the_step_and_time_left_and_hides_the_download_fields(client, engineer):
    job = finetune(status=Job.Status.RUNNING, progress=STEP_PROGRESS)
    client.force_login(engineer)
    page = text(client.get(f"/jobs/{job.pk}/"))
    assert '<span data-progress="step">step 40 of 100</span>' in page
    assert '<span data-progress="eta">2 min 40 s</span>' in page
    assert 'aria-valuenow="40"' in page
    assert shown_kinds(page) == {"steps"}
    assert "40% · step 40 of 100" in page  # the facts
    # The sentences the page's script fills in live, translated where the page is rendered.
    assert 'data-step-text="step {step} of {total}"' in page
    assert 'data-checkpoint="checkpoint at step {step}"' in page


def test_a_download_page_keeps_its_size_fields(client, engineer):
    job = JobFactory(status=Job.Status.RUNNING, progress={"done": 600 * 1024**2, "total": 1024**3, "eta_s": 75})
    client.force_login(engineer)
    page = text(client.get(f"/jobs/{job.pk}/"))
    assert shown_kinds(page) == {"bytes"}
    assert '<span data-progress="eta">1 min 15 s</span>' in page and "600.0 MB" in page


def test_the_curves_come_with_the_log_and_load_nothing_from_elsewhere(client, admin):
    job = JobFactory(kind=Job.Kind.FINETUNE, target=DeploymentFactory(team=TeamFactory()))
    client.force_login(admin)
    page = text(client.get(f"/jobs/{job.pk}/"))
    assert 'id="job-curves"' in page and "Training curves" in page
    sources = re.findall(r'<(?:script|link)[^>]* (?:src|href)="([^"]+)"', page)
    assert "/static/vendor/uplot/uPlot.iife.min.js" in sources and "/static/console/job_curves.js" in sources
    assert [source for source in sources if not source.startswith("/static/")] == []
    # An engineer of another team sees the job but not its log, so no curves either.
    client.force_login(UserFactory(roles=[roles.ENGINEER]))
    page = text(client.get(f"/jobs/{job.pk}/"))
    assert 'id="log-hidden"' in page and 'id="job-curves"' not in page and "uPlot" not in page
