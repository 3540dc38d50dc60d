"""Issue 15 item 7, four eyes on production: launch, edit, rollback, stop and delete of a production deployment (and
moving it out of production) file a request instead of acting; another admin approves (the change is applied, an
edit of a running deployment launches the new version) or rejects (nothing changes); the requester never decides;
unanswered requests lapse; every step is audited; development deployments act at once as before."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from audit.models import AuditEvent
from console.errors import ApplicationError
from deployments.models import ApprovalRequest, Deployment, DeploymentSpec, Gpu, Job
from deployments.serving import approvals
from deployments.serving import services as lifecycle
from deployments.serving.environment import deployment_configure
from tests.factories import DeploymentSpecFactory, GpuFactory, HostFactory, ModelArtifactFactory, UserFactory
from tests.support.model_dirs import write_llama_dir

pytestmark = pytest.mark.django_db
State = Deployment.State
Req = ApprovalRequest.State
PRODUCTION = Deployment.Environment.PRODUCTION


@pytest.fixture
def tiny(tmp_path):
    """A tiny model on a process host with one 16 GB GPU: every spec here fits."""
    host = HostFactory(name="approvals-node")
    GpuFactory(host=host, index=0, memory_total=16 * 10**9)
    return ModelArtifactFactory(host=host, path=str(write_llama_dir(tmp_path / "tiny")), repo__repo_id="org/tiny")


@pytest.fixture
def bob(db):
    """A second admin: the one who approves what alice asks for."""
    return UserFactory(username="bob-admin", roles=["admin"])


def production(artifact, name: str = "prod", state=State.RUNNING, versions: int = 1) -> Deployment:
    """A production deployment with `versions` spec versions (max_total_tokens 256, 300, ...), made directly."""
    for number in range(versions):
        spec = DeploymentSpecFactory(
            deployment__name=name,
            deployment__state=state,
            deployment__environment=PRODUCTION,
            artifact=artifact,
            current=True,
            max_input_tokens=128,
            max_total_tokens=256 + 44 * number,
            **({"deployment": Deployment.objects.get(name=name)} if number else {}),
        )
    return spec.deployment


def events(request: ApprovalRequest) -> list[str]:
    return list(
        AuditEvent.objects.filter(target_type="deployments.approvalrequest", target_id=str(request.pk))
        .order_by("id")
        .values_list("action", flat=True)
    )


def test_an_approved_edit_of_a_running_deployment_makes_the_version_and_launches_it(
    admin, bob, tiny, django_capture_on_commit_callbacks
):
    deployment = production(tiny)
    request = lifecycle.spec_update(actor=admin, deployment=deployment, spec={"max_total_tokens": 512}, note="longer")
    assert isinstance(request, ApprovalRequest) and request.state == Req.PENDING and request.action == "edit"
    assert request.diff == {"max_total_tokens": [256, 512]} and request.verdict["fits"] is True
    assert request.base_version == 1 and request.requested_by == admin
    assert request.expires_at > timezone.now() + timedelta(days=6)  # APPROVAL_TTL_SECONDS, 7 days by default
    deployment.refresh_from_db()
    assert deployment.spec.version == 1 and deployment.specs.count() == 1  # nothing changed yet
    assert list(approvals.waiting_for(bob)) == [request] and not approvals.waiting_for(admin).exists()

    with django_capture_on_commit_callbacks() as callbacks:
        decided = approvals.approve(actor=bob, request=request, comment="ok for prod")
    assert decided.state == Req.APPLIED, decided.result
    deployment.refresh_from_db()
    assert deployment.spec.version == 2 and deployment.spec.max_total_tokens == 512
    assert deployment.spec.created_by == admin and "approval #" in deployment.spec.note  # the requester's version
    job = deployment.job
    assert job is not None and job.kind == Job.Kind.SERVE and job.params["spec"] == deployment.spec.pk
    assert deployment.state == State.STARTING and callbacks, "the new version is launched (sent after commit)"
    assert decided.decided_by == bob and decided.comment == "ok for prod" and "restarts" in decided.result
    assert events(request) == ["approval.requested", "approval.approved", "approval.applied"]
    launched = AuditEvent.objects.get(action="deployment.launched", target_id=str(deployment.pk))
    assert launched.actor_name == "bob-admin"  # the approver's authority


def test_a_requester_cannot_decide_on_their_own_request(admin, bob, tiny):
    deployment = production(tiny)
    request = lifecycle.deployment_stop(actor=admin, deployment=deployment)
    with pytest.raises(approvals.OwnRequest):
        approvals.approve(actor=admin, request=request, comment="me")
    with pytest.raises(approvals.OwnRequest):
        approvals.reject(actor=admin, request=request, comment="me")
    request.refresh_from_db()
    deployment.refresh_from_db()
    assert request.state == Req.PENDING and deployment.state == State.RUNNING


def test_a_rejected_edit_changes_nothing(admin, bob, tiny):
    deployment = production(tiny)
    request = lifecycle.spec_update(actor=admin, deployment=deployment, spec={"max_total_tokens": 512})
    with pytest.raises(ApplicationError, match="Say why"):
        approvals.reject(actor=bob, request=request, comment=" ")
    approvals.reject(actor=bob, request=request, comment="not during the audit")
    request.refresh_from_db()
    deployment.refresh_from_db()
    assert request.state == Req.REJECTED and request.decided_by == bob
    assert deployment.spec.version == 1 and deployment.specs.count() == 1 and deployment.state == State.RUNNING
    assert not Job.objects.exists()
    assert events(request) == ["approval.requested", "approval.rejected"]
    with pytest.raises(ApplicationError, match="is rejected"):
        approvals.approve(actor=bob, request=request)


def test_stop_and_delete_of_a_production_deployment_wait_for_approval(admin, bob, tiny):
    deployment = production(tiny)
    stop = lifecycle.deployment_stop(actor=admin, deployment=deployment)
    assert isinstance(stop, ApprovalRequest) and Deployment.objects.get(pk=deployment.pk).state == State.RUNNING
    with pytest.raises(ApplicationError, match="already waits"):
        lifecycle.deployment_stop(actor=admin, deployment=deployment)
    assert approvals.approve(actor=bob, request=stop).state == Req.APPLIED
    assert Deployment.objects.get(pk=deployment.pk).state == State.STOPPED

    delete = lifecycle.deployment_delete(actor=bob, deployment=deployment)
    assert isinstance(delete, ApprovalRequest) and Deployment.objects.filter(pk=deployment.pk).exists()
    assert approvals.approve(actor=admin, request=delete).state == Req.APPLIED  # bob asked, alice approves
    assert not Deployment.objects.filter(pk=deployment.pk).exists()
    delete.refresh_from_db()
    assert delete.deployment is None and delete.deployment_name == "prod"  # the record outlives the deployment
    assert AuditEvent.objects.filter(action="deployment.deleted", actor_name="alice-admin").exists()


def test_launch_and_rollback_wait_too_and_an_approved_rollback_of_a_stopped_one_launches_nothing(admin, bob, tiny):
    deployment = production(tiny, state=State.STOPPED, versions=2)
    launch = lifecycle.deployment_launch(actor=admin, deployment=deployment)
    assert isinstance(launch, ApprovalRequest) and launch.verdict["fits"] is True and not Job.objects.exists()
    rollback = lifecycle.deployment_rollback(actor=admin, deployment=deployment, version=1)
    assert rollback.diff == {"max_total_tokens": [300, 256]} and rollback.proposal == {"version": 1}

    applied = approvals.approve(actor=bob, request=rollback)
    deployment.refresh_from_db()
    assert applied.state == Req.APPLIED and deployment.spec.version == 3 and deployment.spec.max_total_tokens == 256
    assert deployment.state == State.STOPPED and not Job.objects.exists(), "approved as asked: no launch"
    assert approvals.approve(actor=bob, request=launch).state == Req.APPLIED
    deployment.refresh_from_db()
    assert deployment.state == State.STARTING and deployment.job.params["spec"] == deployment.spec.pk


def test_a_request_on_an_older_version_fails_when_applied_and_says_why(admin, bob, tiny):
    deployment = production(tiny)
    first = lifecycle.spec_update(actor=admin, deployment=deployment, spec={"max_total_tokens": 512})
    rollback_base = DeploymentSpecFactory(deployment=deployment, artifact=tiny, current=True, max_total_tokens=400)
    assert rollback_base.version == 2
    failed = approvals.approve(actor=bob, request=first)
    assert failed.state == Req.FAILED and "version 2 now, not 1" in failed.result
    assert deployment.specs.count() == 2
    assert events(first)[-1] == "approval.failed"


def test_an_unanswered_request_lapses(admin, bob, tiny, settings):
    settings.APPROVAL_TTL_SECONDS = 60
    deployment = production(tiny)
    request = lifecycle.deployment_stop(actor=admin, deployment=deployment)
    ApprovalRequest.objects.filter(pk=request.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert not approvals.waiting_for(bob).exists()  # no longer counted for the approvers
    with pytest.raises(ApplicationError, match="is expired"):
        approvals.approve(actor=bob, request=request)  # checked when someone decides, before the beat task
    request.refresh_from_db()
    assert request.state == Req.EXPIRED and Deployment.objects.get(pk=deployment.pk).state == State.RUNNING
    assert events(request) == ["approval.requested", "approval.expired"]

    again = lifecycle.deployment_stop(actor=admin, deployment=deployment)  # a lapsed request does not block
    ApprovalRequest.objects.filter(pk=again.pk).update(expires_at=timezone.now())
    assert approvals.approvals_expire() == 1
    assert ApprovalRequest.objects.get(pk=again.pk).state == Req.EXPIRED


def test_leaving_production_needs_approval_entering_it_does_not(admin, bob, tiny):
    deployment = production(tiny)
    deployment.environment = Deployment.Environment.DEVELOPMENT
    request = deployment_configure(
        actor=admin, deployment=deployment, environment="development", prompt_retention="full"
    )
    deployment.refresh_from_db()
    assert isinstance(request, ApprovalRequest) and request.action == "environment"
    assert deployment.environment == PRODUCTION and deployment.prompt_retention == "full"  # retention at once
    assert approvals.approve(actor=bob, request=request).state == Req.APPLIED
    deployment.refresh_from_db()
    assert deployment.environment == "development"
    stopped = lifecycle.deployment_stop(actor=admin, deployment=deployment)  # development: at once, as before
    assert stopped.state == State.STOPPED
    assert deployment_configure(actor=admin, deployment=deployment, environment="production").environment == PRODUCTION
    assert AuditEvent.objects.filter(action="deployment.configured", target_id=str(deployment.pk)).count() == 3


def test_the_approver_needs_deploy_on_the_deployment(admin, engineer, tiny):
    deployment = production(tiny)
    request = lifecycle.deployment_stop(actor=admin, deployment=deployment)
    with pytest.raises(approvals.ActionDenied):
        approvals.approve(actor=engineer, request=request)
    assert ApprovalRequest.objects.get(pk=request.pk).state == Req.PENDING


def test_development_deployments_act_at_once(admin, tiny):
    spec = DeploymentSpecFactory(deployment__name="dev", deployment__state=State.RUNNING, artifact=tiny, current=True)
    deployment = spec.deployment
    assert isinstance(
        lifecycle.spec_update(actor=admin, deployment=deployment, spec={"max_total_tokens": 64}), DeploymentSpec
    )
    assert lifecycle.deployment_stop(actor=admin, deployment=deployment).state == State.STOPPED
    assert not ApprovalRequest.objects.exists()


def test_a_new_production_deployment_waits_for_its_launch(admin, bob, tiny):
    deployment = lifecycle.deployment_create(
        actor=admin, name="born-prod", spec={"artifact": tiny.pk, "max_total_tokens": 256}, environment=PRODUCTION
    )
    assert deployment.state == State.STOPPED and not Job.objects.exists()
    [request] = ApprovalRequest.objects.filter(deployment=deployment)
    assert request.action == "launch" and request.state == Req.PENDING


@pytest.mark.django_db(transaction=True)
def test_two_approvers_at_once_make_one_decision(admin, bob, tiny):
    carol = UserFactory(username="carol-admin", roles=["admin"])
    deployment = production(tiny)
    request = lifecycle.deployment_stop(actor=admin, deployment=deployment)
    outcomes, start = {}, threading.Barrier(2)

    def decide(user, verb):
        start.wait()
        try:
            outcomes[user.username] = getattr(approvals, verb)(actor=user, request=request, comment="now").state
        except ApplicationError as error:
            outcomes[user.username] = error.message
        finally:
            connection.close()

    threads = [threading.Thread(target=decide, args=args) for args in ((bob, "approve"), (carol, "reject"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    decided = [value for value in outcomes.values() if value in (Req.APPLIED, Req.REJECTED)]
    assert len(decided) == 1, outcomes
    assert any("nothing to decide" in value for value in outcomes.values()), outcomes
    request.refresh_from_db()
    assert request.state == decided[0]
    assert Deployment.objects.get(pk=deployment.pk).state == (
        State.STOPPED if decided[0] == Req.APPLIED else State.RUNNING
    )
    assert Gpu.objects.exists()
