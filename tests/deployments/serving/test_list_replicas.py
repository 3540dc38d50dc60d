"""The deployments API list reads every row's replicas in one query a page (prefetched) and says the same as the
detail route, which reads them row by row: the servers, how many run, and what the state allows."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from deployments.models import Deployment, DeploymentReplica
from tests.factories import DeploymentFactory, DeploymentSpecFactory, HostFactory

pytestmark = pytest.mark.django_db


def test_the_list_shows_each_deployments_replicas_and_actions_as_the_detail_does(admin, client):
    host = HostFactory()
    held = DeploymentFactory(state=Deployment.State.STOPPED, host=host)
    DeploymentSpecFactory(deployment=held, current=True, replicas=3)
    DeploymentReplica.objects.create(deployment=held, index=2, state=Deployment.State.RUNNING, host=host)
    DeploymentReplica.objects.create(deployment=held, index=1, state=Deployment.State.STOPPED, host=host)
    plain = DeploymentFactory(state=Deployment.State.STOPPED)
    client.force_login(admin)

    listed = {item["id"]: item for item in client.get("/api/v1/deployments/").json()["results"]}
    for deployment in (held, plain):
        detail = client.get(f"/api/v1/deployments/{deployment.pk}/").json()
        assert listed[deployment.pk]["replicas"] == detail["replicas"]
        assert listed[deployment.pk]["actions"] == detail["actions"]
    # A stopped deployment whose replica 2 still runs can be launched or stopped, not deleted; its servers in order.
    assert listed[held.pk]["actions"] == ["launch", "stop"]
    assert [server["index"] for server in listed[held.pk]["replicas"]["servers"]] == [0, 1, 2]
    assert listed[held.pk]["replicas"]["running"] == 1

    more = DeploymentFactory.create_batch(5)
    for deployment in more:
        DeploymentReplica.objects.create(deployment=deployment, index=1, state=Deployment.State.RUNNING, host=host)
    with CaptureQueriesContext(connection) as few:
        client.get("/api/v1/deployments/?page_size=2")
    with CaptureQueriesContext(connection) as many:
        client.get("/api/v1/deployments/?page_size=7")
    assert len(many) == len(few)  # not two queries more a row
