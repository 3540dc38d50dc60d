"""Issue 13 items 9 and 10: one table of state -> actions (deployments/serving/actions.py) drives the services, the
page and the API; a stop asked for is a successful cancellation in the audit log, not a failure."""

from __future__ import annotations

import pytest
from django.utils import timezone, translation

from audit.models import AuditEvent
from console.errors import ApplicationError
from deployments.jobs.services import job_cancel, job_create
from deployments.models import Deployment, Job
from deployments.serving import services as lifecycle
from deployments.serving.actions import ACTIONS, allowed_actions
from tests.factories import DeploymentFactory
from workers import runner

pytestmark = pytest.mark.django_db
State = Deployment.State


def test_every_state_has_its_actions_and_a_failed_deployment_offers_no_restart():
    assert set(ACTIONS) == set(State.values)
    failed = DeploymentFactory(state=State.FAILED)
    assert allowed_actions(failed) == ("launch", "delete")  # it used to show Launch, Restart and Stop at once
    failed.next_restart_at = timezone.now()
    assert allowed_actions(failed) == ("launch", "stop", "delete")  # stop cancels the automatic restart


@translation.override("en")
def test_the_services_refuse_what_the_state_does_not_allow(admin):
    running = DeploymentFactory(state=State.RUNNING)
    with pytest.raises(ApplicationError, match="cannot be launched now"):
        lifecycle.deployment_launch(actor=admin, deployment=running)
    with pytest.raises(ApplicationError, match="cannot be deleted now"):
        lifecycle.deployment_delete(actor=admin, deployment=running)
    failed = DeploymentFactory(state=State.FAILED)
    with pytest.raises(ApplicationError, match=r"cannot be restarted now \(possible: launch, delete\)"):
        lifecycle.deployment_restart(actor=admin, deployment=failed)


def test_the_api_lists_the_allowed_actions(api, admin):
    deployment = DeploymentFactory(state=State.FAILED)
    data = api(admin).get(f"/api/v1/deployments/{deployment.pk}/").data
    assert data["actions"] == ["launch", "delete"]
    refused = api(admin).post(f"/api/v1/deployments/{deployment.pk}/restart/", expected=400).data
    assert "cannot be restarted now" in str(refused)


def test_the_page_shows_only_the_allowed_buttons(client, admin):
    deployment = DeploymentFactory(state=State.FAILED)
    client.force_login(admin)
    page = client.get(f"/deployments/{deployment.pk}/").content.decode()
    for action, shown in (("launch", True), ("delete", True), ("restart", False), ("stop", False)):
        tag = page[page.index(f'id="{action}-form"') :].split(">", 1)[0]
        assert (" hidden" not in tag) is shown, (action, tag)


def test_a_requested_stop_is_audited_as_a_success(admin):
    import tests.support.job_handlers  # noqa: F401  (registers the test job kinds)

    job = job_create(kind="test.count", actor=None, params={})
    job_cancel(actor=admin, job=job, action="view")
    assert runner.run(job.pk) == Job.Status.CANCELLED
    event = AuditEvent.objects.get(action="job.cancelled", target_id=str(job.pk))
    assert event.outcome == "success"  # it was red: a failure
