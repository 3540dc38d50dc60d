"""What a team owns, only that team (or an admin, or a grant on the object) may change or delete. Each test is
the attack, which used to work: an engineer of team A replaced and deleted team B's Hub token."""

from __future__ import annotations

import pytest

from audit.models import AuditEvent
from console.accounts.models import Credential
from console.accounts.services.access import object_grant
from deployments.models import Job
from tests.factories import (
    CredentialFactory,
    DeploymentSpecFactory,
    ModelArtifactFactory,
    TeamFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def teams():
    a, b = TeamFactory(name="team-a"), TeamFactory(name="team-b")
    alice = UserFactory(username="alice-a", roles=["engineer"])
    bob = UserFactory(username="bob-b", roles=["engineer"])
    alice.groups.add(a)
    bob.groups.add(b)
    return alice, bob, CredentialFactory(name="team-b-token", team=b, value="hf_team_b_secret")


def test_another_teams_credential_cannot_be_changed_or_deleted_through_the_api(api, teams):
    alice, bob, token = teams
    api(alice).patch(f"/api/v1/credentials/{token.pk}/", {"value": "hf_stolen"}, expected=403)
    api(alice).patch(f"/api/v1/credentials/{token.pk}/", {"description": "mine now"}, expected=403)
    api(alice).delete(f"/api/v1/credentials/{token.pk}/", expected=403)
    token.refresh_from_db()
    assert token.value.reveal() == "hf_team_b_secret" and token.description == ""
    assert AuditEvent.objects.filter(action="permission.denied", actor_id=alice.pk).count() == 3
    api(bob).patch(f"/api/v1/credentials/{token.pk}/", {"description": "rotated monthly"})  # its own team may
    api(bob).delete(f"/api/v1/credentials/{token.pk}/", expected=204)
    assert not Credential.objects.filter(pk=token.pk).exists()


def test_another_teams_credential_cannot_be_replaced_through_the_page(client, teams):
    alice, _bob, token = teams
    client.force_login(alice)
    response = client.post(f"/credentials/{token.pk}/", {"name": token.name, "kind": token.kind, "value": "hf_x"})
    assert response.status_code == 403
    token.refresh_from_db()
    assert token.value.reveal() == "hf_team_b_secret"


def test_an_admin_and_an_object_grant_may_change_it(api, admin, teams):
    alice, _bob, token = teams
    api(admin).patch(f"/api/v1/credentials/{token.pk}/", {"description": "checked by admin"})
    object_grant(actor=admin, grantee=alice, action="add_model", target=token)
    api(alice).patch(f"/api/v1/credentials/{token.pk}/", {"description": "granted to alice"})


def _copy(created_by=None):
    return ModelArtifactFactory(created_by=created_by)


def test_gc_keeps_what_a_stopped_deployment_of_another_team_names(api, admin, teams):
    alice, bob, _token = teams
    theirs = _copy(created_by=bob)
    named = _copy()  # added by nobody in particular: shared, but a stopped deployment's spec names it
    spec = DeploymentSpecFactory(artifact=named, current=True)
    assert spec.deployment.state == "stopped"
    preview = api(alice).get("/api/v1/models/gc/").data
    assert {item["id"] for item in preview["candidates"]}.isdisjoint({theirs.pk, named.pk})
    jobs = api(alice).post("/api/v1/models/gc/", {}, expected=202).data["jobs"]
    assert jobs == [] and not Job.objects.filter(kind=Job.Kind.DELETE).exists()  # deleted both before
    refused = api(alice).delete(f"/api/v1/models/{named.pk}/", expected=400).data
    assert spec.deployment.name in str(refused)
    api(alice).delete(f"/api/v1/models/{theirs.pk}/", expected=403)  # team B added it
    api(bob).delete(f"/api/v1/models/{theirs.pk}/", expected=202)  # team B may
    mine = _copy(created_by=alice)
    assert [item["id"] for item in api(admin).get("/api/v1/models/gc/").data["candidates"]] == [mine.pk]
