"""console.permissions and the access services: what each role and grant lets a user do."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied
from django.http import Http404

from console import permissions, roles
from console.accounts.models import Credential
from console.accounts.services import access
from console.errors import ApplicationError
from console.permissions import can, require, restrict
from tests.factories import CredentialFactory, TeamFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("role", "action", "allowed"),
    [(role, action, action in roles.ROLES[role]) for role in roles.ROLES for action in roles.ACTIONS],
)
def test_global_actions_follow_the_matrix(role, action, allowed):
    user = UserFactory(roles=[role])
    assert can(user, action) is allowed


def test_the_matrix_is_the_issue_table():
    assert roles.ROLES["engineer"] == {"view", "add_model", "finetune"}
    assert roles.ROLES["auditor"] == {"view", "view_data"}
    assert roles.ROLES["admin"] == set(roles.ACTIONS)
    assert "use_deployment" not in roles.ROLES["engineer"]  # by grant only


def test_scoped_user_lists_exactly_the_granted_objects(admin, nobody):
    mine, other, third = CredentialFactory.create_batch(3)
    access.object_grant(actor=admin, grantee=nobody, action="view", target=mine)
    listed = restrict(Credential.objects.all(), nobody, "view")
    assert list(listed) == [mine]
    require(nobody, "view", mine)
    with pytest.raises(Http404):
        require(nobody, "view", other)
    with pytest.raises(Http404):  # not even visible: no enumeration
        require(nobody, "add_model", third)
    with pytest.raises(PermissionDenied):  # visible but not allowed
        require(nobody, "add_model", mine)


def test_team_grant_reaches_members_and_revoke_takes_it_back(admin):
    team = TeamFactory(name="vision-team")
    member, outsider = UserFactory(), UserFactory()
    member.groups.add(team)
    credential = CredentialFactory()
    access.object_grant(actor=admin, grantee=team, action="add_model", target=credential)
    assert can(member, "add_model", credential)
    assert not can(outsider, "add_model", credential)
    access.object_revoke(actor=admin, grantee=team, action="add_model", target=credential)
    member = type(member).objects.get(pk=member.pk)  # fresh permission cache
    assert not can(member, "add_model", credential)


def test_only_user_managers_grant(engineer, nobody):
    with pytest.raises(PermissionDenied):
        access.object_grant(actor=engineer, grantee=nobody, action="view", target=CredentialFactory())
    with pytest.raises(PermissionDenied):
        access.role_grant(actor=engineer, user=nobody, role="admin")


def test_ungrantable_action_and_role_group_grantee_are_field_errors(admin, nobody):
    from django.contrib.auth.models import Group

    credential = CredentialFactory()
    with pytest.raises(ApplicationError) as error:
        access.object_grant(actor=admin, grantee=nobody, action="deploy", target=credential)
    assert error.value.field == "action"
    with pytest.raises(ApplicationError) as error:
        access.object_grant(actor=admin, grantee=Group.objects.get(name="engineer"), action="view", target=credential)
    assert error.value.field == "grantee"


def test_roles_set_and_last_admin_protection(admin, engineer):
    assert access.roles_set(actor=admin, user=engineer, role_names=["engineer", "auditor"]) == ["engineer", "auditor"]
    with pytest.raises(ApplicationError, match="last active admin"):
        access.roles_set(actor=admin, user=admin, role_names=["engineer"])
    with pytest.raises(ApplicationError):
        access.user_set_active(actor=admin, user=admin, active=False)


def test_inactive_and_anonymous_users_hold_nothing(admin):
    from django.contrib.auth.models import AnonymousUser

    admin.is_active = False
    assert not can(admin, "view")
    assert not can(AnonymousUser(), "view")
    assert restrict(Credential.objects.all(), AnonymousUser(), "view").count() == 0


def test_sync_roles_is_idempotent_and_repairs():
    from django.contrib.auth.models import Group
    from django.core.management import call_command

    Group.objects.get(name="auditor").permissions.clear()
    call_command("sync_roles")
    call_command("sync_roles")
    codenames = set(Group.objects.get(name="auditor").permissions.values_list("codename", flat=True))
    assert codenames == {"view", "view_data"}
    assert Group.objects.filter(name__in=list(roles.ROLES)).count() == 3


def test_user_update_is_all_or_nothing(admin, engineer):
    from django.contrib.auth import get_user_model

    with pytest.raises(ApplicationError):
        # Removing the last admin's role fails, so the email change in the same call is rolled back.
        access.user_update(actor=admin, user=admin, email="new@example.test", role_names=["auditor"])
    admin.refresh_from_db()
    assert admin.email != "new@example.test"
    assert permissions.user_roles(get_user_model().objects.get(pk=admin.pk)) == ["admin"]
