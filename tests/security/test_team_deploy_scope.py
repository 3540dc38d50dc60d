"""The team scopes of deploy: an engineer deploys nothing by default; an admin's grant of deploy on a host lets the
members of that team create and launch the team's deployments there (not elsewhere, not for another team); deploy
on a team's own deployments lets them stop and restart those (not another team's). Grants and revocations are
audited and listed; the grant form picks objects by name."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group

from audit.models import AuditEvent
from deployments.models import Deployment
from deployments.serving import services as lifecycle
from tests.factories import TeamFactory
from tests.support.deploy_fixtures import process_host, ready_artifact
from tests.support.model_dirs import write_llama_dir

pytestmark = pytest.mark.django_db

SPEC = {"device": "cpu", "max_input_tokens": 200, "max_total_tokens": 256}


@pytest.fixture
def world(tmp_path, engineer):
    """Two hosts, each holding a small model; the engineer's team 'vision' and another team 'speech'."""
    h1, h2 = process_host("h1"), process_host("h2")
    a1 = ready_artifact(h1, write_llama_dir(tmp_path / "m1"), repo_id="org/m1")
    a2 = ready_artifact(h2, write_llama_dir(tmp_path / "m2"), repo_id="org/m2")
    vision, speech = TeamFactory(name="vision"), TeamFactory(name="speech")
    vision.user_set.add(engineer)
    return {"h1": h1, "h2": h2, "a1": a1, "a2": a2, "vision": vision, "speech": speech}


def create(api, user, name, artifact, team, expected=201, launch=True):
    body = {"name": name, "team": team, "launch": launch, "spec_input": {"artifact": artifact.pk, **SPEC}}
    return api(user).post("/api/v1/deployments/", body, expected=expected)


def grant(api, admin, team, target_type, target_name, op=""):
    body = {"team": team, "action": "deploy", "target_type": target_type, "target_name": target_name}
    path = "/api/v1/grants/revoke/" if op == "revoke" else "/api/v1/grants/"
    return api(admin).post(path, body, expected=204 if op == "revoke" else 201)


def test_an_engineer_without_grants_cannot_create_a_deployment(api, engineer, world):
    create(api, engineer, "nope", world["a1"], "vision", expected=403)
    assert not Deployment.objects.exists()


def test_deploy_on_a_host_lets_the_team_create_and_launch_there_only(api, admin, engineer, world):
    grant(api, admin, "vision", "deployments.host", "h1")
    made = create(api, engineer, "vision-h1", world["a1"], "vision").data
    deployment = Deployment.objects.get(pk=made["id"])
    assert deployment.host == world["h1"] and deployment.team == world["vision"]
    assert deployment.state in (Deployment.State.STARTING, Deployment.State.DOWNLOADING)
    assert AuditEvent.objects.filter(action="deployment.launched", target_id=str(deployment.pk)).exists()
    # Another host (the model on h2 places there), another team, or no team: refused, nothing saved.
    create(api, engineer, "vision-h2", world["a2"], "vision", expected=403)
    create(api, engineer, "speech-h1", world["a1"], "speech", expected=403)
    create(api, engineer, "nobody-h1", world["a1"], None, expected=403)
    assert list(Deployment.objects.values_list("name", flat=True)) == ["vision-h1"]
    # Its own deployment, stopped, launches again on h1; after the revocation it does not.
    api(engineer).post(f"/api/v1/deployments/{deployment.pk}/stop/", expected=200)
    grant(api, admin, "vision", "deployments.host", "h1", op="revoke")
    api(engineer).post(f"/api/v1/deployments/{deployment.pk}/launch/", expected=403)
    granted = AuditEvent.objects.get(action="grant.added", target_type="deployments.host")
    revoked = AuditEvent.objects.get(action="grant.revoked", target_type="deployments.host")
    assert granted.target_name == revoked.target_name == "h1" and '"grantee":"vision"' in granted.detail


def test_a_launch_placed_outside_the_granted_host_is_refused(admin, engineer, world):
    grant_host = Group.objects.get(name="vision")
    from guardian.shortcuts import assign_perm

    assign_perm("deployments.deploy_host", grant_host, world["h1"])
    deployment = lifecycle.deployment_create(
        actor=admin, name="moved", spec={"artifact": world["a2"].pk, **SPEC}, team=world["vision"], launch=False
    )
    from console.permissions import ActionDenied

    with pytest.raises(ActionDenied):  # never placed: allowed to ask, refused once placement chose h2
        lifecycle.deployment_launch(actor=engineer, deployment=deployment)
    deployment.refresh_from_db()
    assert deployment.state == Deployment.State.STOPPED and deployment.host is None


def test_deploy_on_the_teams_deployments_stops_and_restarts_its_own_only(api, admin, engineer, world):
    ours = lifecycle.deployment_create(
        actor=admin, name="ours", spec={"artifact": world["a1"].pk, **SPEC}, team=world["vision"]
    )
    theirs = lifecycle.deployment_create(
        actor=admin, name="theirs", spec={"artifact": world["a2"].pk, **SPEC}, team=world["speech"]
    )
    api(engineer).post(f"/api/v1/deployments/{ours.pk}/stop/", expected=403)
    grant(api, admin, "vision", "auth.group", "vision")
    api(engineer).post(f"/api/v1/deployments/{ours.pk}/restart/", expected=200)
    ours.refresh_from_db()
    assert ours.restart_requested and ours.state == Deployment.State.STOPPING  # its server stops, then relaunches
    api(engineer).post(f"/api/v1/deployments/{ours.pk}/stop/", expected=200)
    assert AuditEvent.objects.filter(action="deployment.restart_requested", actor_id=engineer.pk).exists()
    api(engineer).post(f"/api/v1/deployments/{theirs.pk}/stop/", expected=403)
    api(engineer).post(f"/api/v1/deployments/{theirs.pk}/restart/", expected=403)
    # Not a way to create: a new deployment needs a host grant.
    create(api, engineer, "fresh", world["a1"], "vision", expected=403)


def test_scope_grants_belong_to_a_team(api, admin, engineer, world):
    body = {"user": engineer.username, "action": "deploy", "target_type": "deployments.host", "target_name": "h1"}
    assert "team" in api(admin).post("/api/v1/grants/", body, expected=400).data
    body = {"team": "vision", "action": "deploy", "target_type": "auth.group", "target_name": "speech"}
    api(admin).post("/api/v1/grants/", body, expected=400)
    body = {"team": "vision", "action": "deploy", "target_type": "auth.group", "target_name": "engineer"}
    api(admin).post("/api/v1/grants/", body, expected=400)  # a role is not a team
    body = {"team": "vision", "action": "view", "target_type": "deployments.host", "target_name": "h1"}
    api(admin).post("/api/v1/grants/", body, expected=400)  # only deploy is granted on a host


def test_grant_targets_are_searched_by_name_and_listed_with_their_kind(api, admin, engineer, client, world):
    found = api(admin).get("/api/v1/grants/targets/?target_type=deployments.host&search=h").data
    assert [t["name"] for t in found] == ["h1", "h2"]
    teams = api(admin).get("/api/v1/grants/targets/?target_type=auth.group").data
    assert [t["name"] for t in teams] == ["speech", "vision"]  # never a role group
    api(engineer).get("/api/v1/grants/targets/?target_type=deployments.host", expected=403)
    client.force_login(admin)
    page = client.get("/grants/").content.decode()
    assert 'list="grant-target-options"' in page and 'id="grant-target-options"' in page
    response = client.post(
        "/grants/", {"team": "vision", "action": "deploy", "target_type": "deployments.host", "target_name": "h2"}
    )
    assert response.status_code == 302
    rows = api(admin).get("/api/v1/grants/").data
    assert [(r["team"], r["target_type"], r["target_name"]) for r in rows] == [("vision", "deployments.host", "h2")]
    assert "Host" in client.get("/grants/").content.decode()
    missing = client.post(
        "/grants/", {"team": "vision", "action": "deploy", "target_type": "deployments.host", "target_name": "h9"}
    )
    assert missing.status_code == 400 and "No host named" in missing.content.decode()


def test_the_deploy_page_opens_for_a_team_with_a_host_grant(client, api, admin, engineer, world):
    """Issue 13 item 4: a team deploys within its scope without an admin creating each deployment, in the page as
    in the API. The page offers only the teams whose grants allow it; a host outside the grant is refused there,
    with the reason on the form and nothing saved."""
    client.force_login(engineer)
    assert client.get("/deployments/new/").status_code == 403  # no grant yet: no deploy page
    grant(api, admin, "vision", "deployments.host", "h1")
    page = client.get("/deployments/new/")
    assert page.status_code == 200
    teams = page.context["form"].fields["team"]
    assert list(teams.queryset.values_list("name", flat=True)) == ["vision"] and teams.required
    form = {"name": "from-the-page", "team": world["vision"].pk, "restart_policy": "on-failure", "confirm": "1"}
    spec = {
        "device": "cpu",
        "max_input_tokens": "200",
        "max_total_tokens": "256",
        "cuda_memory_fraction": "1.0",
        "max_concurrent_requests": "8",
    }
    made = client.post("/deployments/new/", {**form, **spec, "artifact": world["a1"].pk})
    assert made.status_code == 302, made.context["form"].errors if made.context else made
    assert Deployment.objects.get(name="from-the-page").host == world["h1"]
    refused = client.post("/deployments/new/", {**form, **spec, "name": "elsewhere", "artifact": world["a2"].pk})
    assert refused.status_code == 403 and "may not deploy on the host" in refused.content.decode()
    assert not Deployment.objects.filter(name="elsewhere").exists()
