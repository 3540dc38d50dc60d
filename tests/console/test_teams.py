"""Teams: created, renamed, given members and deleted (only when they own nothing) by admins, on pages and through
the API; every change is an audit event; a team is never a role."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from guardian.shortcuts import assign_perm

from audit.models import AuditEvent
from tests.factories import CredentialFactory, DeploymentFactory, TeamFactory, UserFactory

pytestmark = pytest.mark.django_db


def events(team_pk: int) -> list[tuple[str, str]]:
    rows = AuditEvent.objects.filter(target_type="auth.group", target_id=str(team_pk)).order_by("id")
    return [(e.action, e.target_name) for e in rows]


def test_an_admin_runs_a_team_through_the_api_and_every_change_is_audited(api, admin, engineer):
    client = api(admin)
    team = client.post("/api/v1/teams/", {"name": "Vision"}).data
    assert team["members"] == []
    client.post(f"/api/v1/teams/{team['id']}/members/", {"username": engineer.username}, expected=200)
    assert client.get(f"/api/v1/teams/{team['id']}/members/").data["members"] == [engineer.username]
    assert Group.objects.get(pk=team["id"]).user_set.filter(pk=engineer.pk).exists()
    client.patch(f"/api/v1/teams/{team['id']}/", {"name": "Vision Lab"})
    listed = client.get("/api/v1/teams/?search=lab").data["results"]
    assert [t["name"] for t in listed] == ["Vision Lab"]
    client.delete(f"/api/v1/teams/{team['id']}/members/{engineer.username}/")
    client.delete(f"/api/v1/teams/{team['id']}/")
    assert not Group.objects.filter(pk=team["id"]).exists()
    assert [action for action, _name in events(team["id"])] == [
        "team.created",
        "team.member_added",
        "team.renamed",
        "team.member_removed",
        "team.deleted",
    ]
    renamed = AuditEvent.objects.get(action="team.renamed", target_id=str(team["id"]))
    assert '"Vision"' in renamed.diff and '"Vision Lab"' in renamed.diff


@pytest.mark.parametrize("name", ["admin", "Engineer", "AUDITOR", "<script>x</script>", "x" * 5000, "  "])
def test_a_team_name_is_never_a_role_markup_or_too_long(api, admin, name):
    response = api(admin).post("/api/v1/teams/", {"name": name}, expected=400)
    assert "name" in response.data or "name" in str(response.data)
    assert not Group.objects.filter(name=name).exclude(name__in=["admin", "engineer", "auditor"]).exists()


def test_names_are_unique_case_aside_and_a_role_is_not_a_team(api, admin):
    TeamFactory(name="nlp")
    api(admin).post("/api/v1/teams/", {"name": "NLP"}, expected=400)
    role = Group.objects.get(name="engineer")
    api(admin).get(f"/api/v1/teams/{role.pk}/", expected=404)
    api(admin).delete(f"/api/v1/teams/{role.pk}/", expected=404)
    assert "engineer" not in [t["name"] for t in api(admin).get("/api/v1/teams/").data["results"]]


@pytest.mark.parametrize("holding", ["deployment", "credential", "grant to it", "grant on it"])
def test_a_team_that_owns_something_is_not_deleted(api, admin, engineer, holding):
    team = TeamFactory(name="owners")
    if holding == "deployment":
        DeploymentFactory(team=team)
    elif holding == "credential":
        CredentialFactory(team=team)
    elif holding == "grant to it":
        assign_perm("view_credential", team, CredentialFactory())
    else:
        assign_perm("auth.change_group", engineer, team)  # any object permission on the team counts
    response = api(admin).delete(f"/api/v1/teams/{team.pk}/", expected=400)
    assert "still owns" in str(response.data)
    assert Group.objects.filter(pk=team.pk).exists()
    assert not AuditEvent.objects.filter(action="team.deleted").exists()


def test_the_teams_page_searches_pages_and_creates_with_a_redirect(client, admin):
    for n in range(30):
        TeamFactory(name=f"squad-{n:02d}")
    client.force_login(admin)
    page = client.get("/teams/?q=squad-0").content.decode()
    assert page.count("data-team=") == 10
    assert 'data-page="2"' in client.get("/teams/").content.decode()
    response = client.post("/teams/", {"name": "Speech"})
    team = Group.objects.get(name="Speech")
    assert response.status_code == 302 and response["Location"] == f"/teams/{team.pk}/"
    refused = client.post("/teams/", {"name": "admin"})
    assert refused.status_code == 400 and "role name" in refused.content.decode()


def test_the_team_page_renames_adds_and_removes_members_and_deletes(client, admin):
    person = UserFactory(username="dana")
    team = TeamFactory(name="robotics")
    client.force_login(admin)
    page = client.get(f"/teams/{team.pk}/").content.decode()
    assert 'list="user-options"' in page and 'id="user-options"' in page
    assert client.post(f"/teams/{team.pk}/", {"op": "add", "username": "dana"}).status_code == 302
    assert client.post(f"/teams/{team.pk}/", {"op": "add", "username": "nobody-here"}).status_code == 400
    assert 'data-member="dana"' in client.get(f"/teams/{team.pk}/").content.decode()
    assert client.post(f"/teams/{team.pk}/", {"op": "rename", "name": "Robotics Lab"}).status_code == 302
    team.refresh_from_db()
    assert team.name == "Robotics Lab"
    assert client.post(f"/teams/{team.pk}/", {"op": "remove", "username": "dana"}).status_code == 302
    assert not team.user_set.filter(pk=person.pk).exists()
    assert client.post(f"/teams/{team.pk}/", {"op": "delete"})["Location"] == "/teams/"
    assert not Group.objects.filter(pk=team.pk).exists()


def test_the_team_page_says_why_a_team_cannot_be_deleted(client, admin):
    team = TeamFactory(name="platform")
    DeploymentFactory(team=team)
    client.force_login(admin)
    response = client.post(f"/teams/{team.pk}/", {"op": "delete"})
    assert response.status_code == 400
    assert 'id="team-delete-error"' in response.content.decode() and "1 deployment" in response.content.decode()
    assert Group.objects.filter(pk=team.pk).exists()


def test_the_schema_documents_the_teams_api(api, admin):
    paths = api(admin).get("/api/v1/schema/?format=json").json()["paths"]
    assert {"/api/v1/teams/", "/api/v1/teams/{id}/", "/api/v1/teams/{id}/members/"} <= set(paths)
    assert "/api/v1/teams/{id}/members/{username}/" in paths
