"""A long-lived websocket holds only what its user may do now: revoking a grant or a role ends it at the next
generation (playground) or the next batch of items (live streams), and the denial is audited. Each test is the
attack (keep using a socket after losing the right), which used to work."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

import audit
from audit.models import AuditEvent
from console import roles
from console.accounts.services.access import object_grant, object_revoke, role_revoke
from console.asgi import application
from console.streams import StreamConsumer
from tests.console.test_websocket import ORIGIN, session_cookie
from tests.factories import DeploymentFactory, UserFactory
from tests.support.aio import run_async

pytestmark = pytest.mark.django_db(transaction=True)


async def _socket(user, path: str) -> WebsocketCommunicator:
    cookie = await database_sync_to_async(session_cookie)(user)
    socket = WebsocketCommunicator(application, path, headers=[ORIGIN, (b"cookie", cookie)])
    connected, _ = await socket.connect()
    assert connected
    return socket


def _denials(user) -> int:
    return AuditEvent.objects.filter(action="permission.denied", actor_id=user.pk).count()


async def _closed_with(socket, code: int) -> bool:
    while True:
        output = await socket.receive_output(timeout=10)
        if output["type"] == "websocket.close":
            return output.get("code") == code


def test_a_revoked_grant_ends_the_playground_at_the_next_generation(redis_url, admin):
    run_async(_revoked_grant(admin))


async def _revoked_grant(admin):
    engineer = await database_sync_to_async(UserFactory)(roles=["engineer"])
    deployment = await database_sync_to_async(DeploymentFactory)()
    grant = database_sync_to_async(object_grant)
    await grant(actor=admin, grantee=engineer, action=roles.USE_DEPLOYMENT, target=deployment)
    socket = await _socket(engineer, f"/ws/deployments/{deployment.pk}/playground/")
    await socket.send_json_to({"type": "generate", "mode": "completion", "prompt": "hi"})
    answer = await socket.receive_json_from(timeout=10)
    assert answer["type"] == "error" and "revoked" not in answer["detail"]  # allowed: only "not running"
    used = await database_sync_to_async(
        lambda: list(AuditEvent.objects.filter(action="deployment.used", actor_id=engineer.pk).values("outcome"))
    )()
    assert used == [{"outcome": "failure"}]  # a failed generation is a use too, audited with its outcome

    revoke = database_sync_to_async(object_revoke)
    await revoke(actor=admin, grantee=engineer, action=roles.USE_DEPLOYMENT, target=deployment)
    await socket.send_json_to({"type": "generate", "mode": "completion", "prompt": "hi again"})
    assert await socket.receive_json_from(timeout=10) == {"type": "error", "detail": "permission revoked"}
    assert await _closed_with(socket, 4403)
    assert await database_sync_to_async(_denials)(engineer) == 1


def test_a_revoked_role_ends_the_live_audit_stream(redis_url, admin, monkeypatch):
    monkeypatch.setattr(StreamConsumer, "recheck_seconds", 0.0)  # check before every batch
    run_async(_revoked_role(admin))


async def _revoked_role(admin):
    auditor = await database_sync_to_async(UserFactory)(roles=["auditor"])
    socket = await _socket(auditor, "/ws/audit/")  # (its login is an event too)
    head = await database_sync_to_async(lambda: AuditEvent.objects.order_by("-id").values_list("id", flat=True)[0])()
    await socket.send_json_to({"type": "subscribe", "after": head})
    while (await socket.receive_json_from(timeout=10))["type"] != "caught_up":
        pass
    record = database_sync_to_async(lambda i: audit.record(action="test.secret", actor=None, detail={"i": i}))
    await record(1)
    while (message := await socket.receive_json_from(timeout=10))["type"] != "items":
        pass
    assert any(item["action"] == "test.secret" for item in message["items"])

    await database_sync_to_async(role_revoke)(actor=admin, user=auditor, role=roles.AUDITOR)
    await record(2)
    message = await socket.receive_json_from(timeout=10)
    assert message == {"type": "error", "detail": "permission revoked"}  # not the event
    assert await _closed_with(socket, 4403)


@pytest.mark.parametrize(
    ("origin", "host", "accepted"),
    [
        ("http://127.0.0.1", "", True),  # an ALLOWED_HOSTS name on the default port
        ("http://127.0.0.1:8000", "127.0.0.1:8000", True),  # the console's own page, on the port it is served on
        ("http://localhost:9999", "localhost:8000", False),  # another local service's page: same host, other port
        ("https://localhost:9999", "localhost:8000", False),
        ("http://127.0.0.1:8000", "127.0.0.1:9000", False),
        ("http://evil.example", "evil.example", False),  # not an allowed host, even as its own origin
        ("null", "127.0.0.1", False),
    ],
)
def test_websockets_match_the_whole_origin(redis_url, admin, origin, host, accepted):
    run_async(_origin(admin, origin, host, accepted))


async def _origin(admin, origin, host, accepted):
    cookie = await database_sync_to_async(session_cookie)(admin)
    headers = [(b"origin", origin.encode()), (b"cookie", cookie), *([(b"host", host.encode())] if host else [])]
    socket = WebsocketCommunicator(application, "/ws/audit/", headers=headers)
    connected, _ = await socket.connect()
    assert connected is accepted
    if connected:
        await socket.disconnect()


def test_an_ended_session_ends_its_live_stream(redis_url, monkeypatch):
    """Logging out elsewhere, or an admin's password reset, deletes the session; a socket opened with it kept
    streaming the audit log until it was closed."""
    monkeypatch.setattr(StreamConsumer, "recheck_seconds", 0.0)
    run_async(_ended_session())


async def _ended_session():
    from django.contrib.sessions.models import Session

    auditor = await database_sync_to_async(UserFactory)(roles=["auditor"])
    socket = await _socket(auditor, "/ws/audit/")
    await socket.send_json_to({"type": "subscribe", "after": 0})
    while (await socket.receive_json_from(timeout=10))["type"] != "caught_up":
        pass
    await database_sync_to_async(lambda: Session.objects.all().delete())()  # every session of the test: ended
    await database_sync_to_async(lambda: audit.record(action="test.after_logout", actor=None))()
    assert await socket.receive_json_from(timeout=10) == {"type": "error", "detail": "permission revoked"}
    assert await _closed_with(socket, 4403)


def test_a_temporary_password_opens_no_socket(redis_url, admin):
    """After an admin's reset, pages and the API lead only to the password change; sockets must too."""
    run_async(_temporary_password(admin))


async def _temporary_password(admin):
    from console.accounts.services.passwords import password_reset

    auditor = await database_sync_to_async(UserFactory)(roles=["auditor"])
    await database_sync_to_async(password_reset)(actor=admin, user=auditor, new_password="a-Temporary-pass-42")
    cookie = await database_sync_to_async(session_cookie)(auditor)
    socket = WebsocketCommunicator(application, "/ws/audit/", headers=[ORIGIN, (b"cookie", cookie)])
    connected, code = await socket.connect()
    assert not connected and code == 4403
