"""Every role x every websocket endpoint: accepted, or closed with the code the pages would answer."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from console.asgi import application
from console.routing import websocket_urlpatterns
from tests.console.test_websocket import ORIGIN, session_cookie
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True)
ACCEPT = "accept"
WS_MATRIX = {
    # path: anonymous, nobody, auditor, engineer, admin
    "/ws/heartbeat/": (4401, 4403, ACCEPT, ACCEPT, ACCEPT),
    "/ws/audit/": (4401, 4403, ACCEPT, 4403, ACCEPT),
    "/ws/jobs/<int:job_id>/": (4401, 4403, ACCEPT, ACCEPT, ACCEPT),
    # use_deployment: admins; engineers only by a grant on that deployment (test below)
    "/ws/deployments/<int:deployment_id>/playground/": (4401, 4403, 4403, 4403, ACCEPT),
}
ROLES = ("anonymous", "nobody", "auditor", "engineer", "admin")


def test_every_websocket_route_is_in_the_matrix():
    assert {"/" + str(p.pattern) for p in websocket_urlpatterns} == set(WS_MATRIX)


def concrete(path: str) -> str:
    """The route with its parameters filled by objects made for the test."""
    if "<int:job_id>" in path:
        from deployments.models import Job

        return path.replace("<int:job_id>", str(Job.objects.create(kind=Job.Kind.DOWNLOAD).pk))
    if "<int:deployment_id>" in path:
        return path.replace("<int:deployment_id>", str(_deployment().pk))
    return path


def _deployment():
    from deployments.models import Deployment

    return Deployment.objects.create(name=f"ws-matrix-{Deployment.objects.count()}")


@pytest.mark.parametrize("path", list(WS_MATRIX))
@pytest.mark.parametrize("role", ROLES)
async def test_websocket_matrix(path, role, redis_url):
    expected = WS_MATRIX[path][ROLES.index(role)]
    headers = [ORIGIN]
    if role != "anonymous":
        user = await database_sync_to_async(UserFactory)(roles=[] if role == "nobody" else [role])
        headers.append((b"cookie", await database_sync_to_async(session_cookie)(user)))
    socket = WebsocketCommunicator(application, await database_sync_to_async(concrete)(path), headers=headers)
    connected, code = await socket.connect()
    if expected == ACCEPT:
        assert connected, f"{role} refused on {path} ({code})"
        await socket.disconnect()
    else:
        assert not connected and code == expected, f"{role} on {path}: {connected} {code}"


async def test_an_engineer_with_a_grant_uses_that_deployments_playground(redis_url):
    from guardian.shortcuts import assign_perm

    user = await database_sync_to_async(UserFactory)(roles=["engineer"])
    granted, other = await database_sync_to_async(_deployment)(), await database_sync_to_async(_deployment)()
    await database_sync_to_async(assign_perm)("deployments.use_deployment_deployment", user, granted)
    headers = [ORIGIN, (b"cookie", await database_sync_to_async(session_cookie)(user))]
    for deployment, expected in ((granted, ACCEPT), (other, 4403)):
        socket = WebsocketCommunicator(application, f"/ws/deployments/{deployment.pk}/playground/", headers=headers)
        connected, code = await socket.connect()
        if expected == ACCEPT:
            assert connected, code
            await socket.disconnect()
        else:
            assert not connected and code == expected
