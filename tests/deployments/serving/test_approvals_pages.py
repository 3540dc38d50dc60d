"""Issue 15 item 7 through the pages and the API: a production deployment's edit, stop or delete answers "approval
requested" (a banner on its page, 202 in the API); approvers see a count in the menu and decide on the Approvals
pages or in the API; the requester's own decision is a 403 with an audit denial; a rejection changes nothing."""

from __future__ import annotations

import re

import pytest

from audit.models import AuditEvent
from deployments.models import ApprovalRequest, Deployment, Job
from tests.factories import DeploymentSpecFactory, GpuFactory, HostFactory, ModelArtifactFactory, UserFactory
from tests.support.model_dirs import write_llama_dir

pytestmark = pytest.mark.django_db
PRODUCTION = Deployment.Environment.PRODUCTION


@pytest.fixture
def tiny(tmp_path):
    host = HostFactory(name="approval-pages")
    GpuFactory(host=host, index=0, memory_total=16 * 10**9)
    return ModelArtifactFactory(host=host, path=str(write_llama_dir(tmp_path / "tiny")), repo__repo_id="org/tiny")


@pytest.fixture
def bob(db):
    return UserFactory(username="bob-admin", roles=["admin"])


def production(artifact, name="prod", state=Deployment.State.RUNNING) -> Deployment:
    spec = DeploymentSpecFactory(
        deployment__name=name,
        deployment__state=state,
        deployment__environment=PRODUCTION,
        artifact=artifact,
        current=True,
        max_input_tokens=128,
        max_total_tokens=256,
    )
    return spec.deployment


def edit_form(artifact, **extra) -> dict:
    return {
        "artifact": artifact.pk,
        "device": "gpu",
        "max_input_tokens": 128,
        "max_total_tokens": 256,
        "replicas": 1,
        "max_concurrent_requests": 128,
        "cuda_memory_fraction": 1.0,
        "environment": PRODUCTION,
        "prompt_retention": "none",
        **extra,
    }


def text(response) -> str:
    return response.content.decode()


def badge(client) -> str | None:
    found = re.search(r'id="approvals-waiting"[^>]*>(\d+)<', text(client.get("/approvals/")))
    return found.group(1) if found else None


def test_an_edit_on_the_page_waits_and_another_admin_approves_it_there(
    client, admin, bob, tiny, django_capture_on_commit_callbacks
):
    deployment = production(tiny)
    client.force_login(admin)
    response = client.post(f"/deployments/{deployment.pk}/edit/", edit_form(tiny, max_total_tokens=512), follow=True)
    request = ApprovalRequest.objects.get(deployment=deployment)
    assert f"request #{request.pk} (edit) waits for another admin" in text(response)
    assert re.search(rf'id="approval-pending".*data-approval="{request.pk}"', text(response), re.S)
    assert 'id="production-badge"' in text(response)
    assert Deployment.objects.get(pk=deployment.pk).spec.version == 1
    assert badge(client) is None  # nothing waits for the requester

    client.force_login(bob)
    assert badge(client) == "1"
    listing = text(client.get("/approvals/?state=pending"))
    assert f'data-approval="{request.pk}" data-state="pending"' in listing and "data-decidable" in listing
    page = text(client.get(f"/approvals/{request.pk}/"))
    assert re.search(r'data-field="max_total_tokens".*<code>256</code>.*<code>512</code>', page, re.S)
    assert 'data-fits="yes"' in page and 'id="approve-form"' in page and "data-confirm=" in page
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        done = client.post(f"/approvals/{request.pk}/approve/", {"comment": "fine"}, follow=True)
    assert "Approved and applied" in text(done)
    deployment.refresh_from_db()
    assert deployment.spec.version == 2 and deployment.job.kind == Job.Kind.SERVE and callbacks
    assert badge(client) is None


def test_self_approval_is_a_403_on_the_page_and_in_the_api_and_is_audited(client, api, admin, bob, tiny):
    deployment = production(tiny)
    client.force_login(admin)
    client.post(f"/deployments/{deployment.pk}/stop/")
    request = ApprovalRequest.objects.get(deployment=deployment, action="stop")
    page = text(client.get(f"/approvals/{request.pk}/"))
    assert 'id="own-request"' in page and 'id="approve-form"' not in page

    refused = client.post(f"/approvals/{request.pk}/approve/", {"comment": "mine"})
    assert refused.status_code == 403 and "another admin must approve or reject it" in text(refused)
    answer = api(admin).post(f"/api/v1/approvals/{request.pk}/approve/", {"comment": "mine"}, expected=403).json()
    assert "another admin" in answer["detail"]
    denials = AuditEvent.objects.filter(action="permission.denied", target_type="deployments.approvalrequest")
    assert denials.count() == 2 and all(event.actor_name == "alice-admin" for event in denials)
    assert {event.details["path"] for event in denials} == {
        f"/approvals/{request.pk}/approve/",
        f"/api/v1/approvals/{request.pk}/approve/",
    }
    assert ApprovalRequest.objects.get(pk=request.pk).state == "pending"
    assert Deployment.objects.get(pk=deployment.pk).state == Deployment.State.RUNNING


def test_the_api_answers_202_and_a_rejection_changes_nothing(api, admin, bob, tiny):
    deployment = production(tiny)
    url = f"/api/v1/deployments/{deployment.pk}/"
    edit = api(admin).patch(url, {"spec": {"max_total_tokens": 512}}, expected=202).json()
    assert edit["action"] == "edit" and edit["state"] == "pending" and edit["diff"] == {"max_total_tokens": [256, 512]}
    assert edit["verdict"]["fits"] is True and edit["requested_by"] == "alice-admin"
    stop = api(admin).post(url + "stop/", expected=202).json()
    assert stop["action"] == "stop"
    listed = api(bob).get("/api/v1/approvals/?state=pending").json()["results"]
    assert {row["id"] for row in listed} == {edit["id"], stop["id"]}

    api(bob).post(f"/api/v1/approvals/{edit['id']}/reject/", {}, expected=400)  # a rejection says why
    rejected = api(bob).post(f"/api/v1/approvals/{edit['id']}/reject/", {"comment": "freeze"}, expected=200).json()
    assert rejected["state"] == "rejected" and rejected["decided_by"] == "bob-admin"
    api(bob).post(f"/api/v1/approvals/{edit['id']}/approve/", {}, expected=400)  # decided once
    deployment.refresh_from_db()
    assert deployment.spec.version == 1 and deployment.state == Deployment.State.RUNNING and not Job.objects.exists()

    applied = api(bob).post(f"/api/v1/approvals/{stop['id']}/approve/", {"comment": "ok"}, expected=200).json()
    assert applied["state"] == "applied"
    assert api(admin).get(url).json()["state"] == "stopped"
    assert api(admin).delete(url, expected=202).json()["action"] == "delete"
    assert Deployment.objects.filter(pk=deployment.pk).exists()
    api(admin).get("/api/v1/approvals/", expected=200)


def test_the_environment_field_marks_production_at_once_and_leaving_it_waits(client, admin, tiny):
    spec = DeploymentSpecFactory(
        deployment__name="dev", artifact=tiny, current=True, max_input_tokens=128, max_total_tokens=256
    )
    deployment = spec.deployment
    client.force_login(admin)
    assert 'name="environment"' in text(client.get(f"/deployments/{deployment.pk}/edit/"))
    response = client.post(f"/deployments/{deployment.pk}/edit/", edit_form(tiny, prompt_retention="full"), follow=True)
    assert "Environment and prompt retention saved." in text(response)
    deployment.refresh_from_db()
    assert (deployment.environment, deployment.prompt_retention, deployment.specs.count()) == (PRODUCTION, "full", 1)

    response = client.post(
        f"/deployments/{deployment.pk}/edit/", edit_form(tiny, environment="development"), follow=True
    )
    assert "(leave production) waits for another admin" in text(response)  # the retention went back at once
    deployment.refresh_from_db()
    assert (deployment.environment, deployment.prompt_retention) == (PRODUCTION, "none")
    response = client.post(f"/deployments/{deployment.pk}/edit/", edit_form(tiny))
    assert response.status_code == 400 and "Nothing changed." in text(response)


def test_a_production_deployment_made_on_the_deploy_page_waits_for_its_launch(client, admin, tiny):
    client.force_login(admin)
    data = {**edit_form(tiny), "name": "born-prod", "restart_policy": "on-failure", "confirm": "1"}
    response = client.post("/deployments/new/", data, follow=True)
    deployment = Deployment.objects.get(name="born-prod")
    assert deployment.environment == PRODUCTION and deployment.state == Deployment.State.STOPPED
    assert "(launch) waits for another admin" in text(response) and not Job.objects.exists()


def test_a_rejection_without_a_reason_is_refused_on_its_field(client, admin, bob, tiny):
    deployment = production(tiny)
    client.force_login(admin)
    client.post(f"/deployments/{deployment.pk}/stop/")
    request = ApprovalRequest.objects.get(deployment=deployment)
    client.force_login(bob)
    response = client.post(f"/approvals/{request.pk}/reject/", {"comment": ""})
    assert response.status_code == 400 and 'data-field-error="comment">Say why' in text(response)
    assert ApprovalRequest.objects.get(pk=request.pk).state == "pending"
    refused = client.post(f"/approvals/{request.pk}/approve/", {"comment": "a\x00b"})
    assert refused.status_code == 400 and ApprovalRequest.objects.get(pk=request.pk).state == "pending"
