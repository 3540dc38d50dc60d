"""A grant-only user's deployments list is counted from the grants (no COUNT(*) over the table), and the total stays
exact: a grant held twice (the user's and a team's) counts once, a grant left by a deleted deployment not at all."""

from __future__ import annotations

import importlib
import io
from types import SimpleNamespace

import pytest
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from guardian.models import GroupObjectPermission, UserObjectPermission
from guardian.shortcuts import assign_perm

from deployments.models import Deployment
from tests.factories import UserFactory
from tests.factories.serving import DeploymentFactory

pytestmark = pytest.mark.django_db


def _listed(client: Client, query: str = "") -> dict:
    response = client.get(f"/api/v1/deployments/{query}")
    assert response.status_code == 200, response.content
    return response.json()


def test_the_granted_count_is_exact_with_shared_and_stale_grants():
    user = UserFactory(roles=[])
    team = Group.objects.create(name="grant-count-team")
    user.groups.add(team)
    deployments = DeploymentFactory.create_batch(6)
    DeploymentFactory.create_batch(3)  # not granted
    for deployment in deployments[:4]:
        assign_perm("deployments.view_deployment", user, deployment)
    for deployment in deployments[2:]:
        assign_perm("deployments.view_deployment", team, deployment)  # 2 and 3 held both ways
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(user)

    with CaptureQueriesContext(connection) as queries:
        listed = _listed(client, "?page_size=2")
    assert listed["count"] == 6 and len(listed["results"]) == 2
    counts = [q["sql"] for q in queries if "COUNT(" in q["sql"].upper()]
    assert len(counts) == 1 and "UNION" in counts[0].upper(), counts  # from the grants, not the whole table

    # Deleted through the ORM, a deployment takes its grants (user's and team's) with it: the count stays exact.
    Deployment.objects.filter(pk=deployments[2].pk).delete()
    kind = ContentType.objects.get_for_model(Deployment)
    assert not UserObjectPermission.objects.filter(content_type=kind, object_pk=str(deployments[2].pk)).exists()
    assert not GroupObjectPermission.objects.filter(content_type=kind, object_pk=str(deployments[2].pk)).exists()
    assert _listed(client)["count"] == 5 == len(_listed(client)["results"])

    # Grants left by objects deleted before (or by raw SQL): the upgrade's migration and `prune_grants` remove them.
    view = Permission.objects.get(content_type=kind, codename="view_deployment")
    gone = Deployment.objects.order_by("-pk").first().pk + 1000
    left = [
        UserObjectPermission(user=user, permission=view, content_type=kind, object_pk=str(gone + i)) for i in (0, 1)
    ]
    UserObjectPermission.objects.bulk_create(left)  # as guardian kept them (its save() needs the object)
    out = io.StringIO()
    call_command("prune_grants", stdout=out)
    assert "2 stale grants removed" in out.getvalue()
    assert _listed(client)["count"] == 5 == len(_listed(client)["results"])
    UserObjectPermission.objects.bulk_create(
        [UserObjectPermission(user=user, permission=view, content_type=kind, object_pk=str(gone))]
    )
    importlib.import_module("console.migrations.0006_prune_stale_grants").prune(
        None, SimpleNamespace(connection=connection)
    )
    assert not UserObjectPermission.objects.filter(object_pk=str(gone)).exists()
    assert _listed(client)["count"] == 5 == len(_listed(client)["results"])
    # Filtered: the exact count of the filtered list, as before.
    name = deployments[1].name
    assert _listed(client, f"?search={name}")["count"] == 1
