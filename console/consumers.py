"""Websocket consumers of the console app."""

from __future__ import annotations

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.utils import timezone

from console import roles
from console.permissions import report_denial, require
from console.stream_db import database_sync_to_async

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404


class ConsoleConsumer(AsyncJsonWebsocketConsumer):
    """Base: session user required, then the same permission check as the HTTP views, at connect and again
    while the socket lives (`still_allowed`): a revoked role or grant ends what it allowed."""

    permission_action = roles.VIEW

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        try:
            await database_sync_to_async(self.authorize)(user)
        except (PermissionDenied, Http404) as denied:  # ObjectHidden (404) too: a consumer answers both alike
            await database_sync_to_async(report_denial)(denied, user=user, path=self.scope.get("path", ""))
            await self.close(code=CLOSE_FORBIDDEN)
            return
        await self.accept()
        await self.joined()

    def authorize(self, user) -> None:
        """Raise PermissionDenied (or Http404) unless `user` may use this socket; runs in a thread."""
        require(user, self.permission_action)

    async def still_allowed(self) -> bool:
        """The permission again, for the user as the database has them now (roles and grants may have been
        revoked, the account deactivated, the session ended). On a refusal the denial is recorded and the socket
        closed."""
        pk = self.scope["user"].pk
        session = self.scope.get("session")

        def check() -> None:
            user = get_user_model().objects.filter(pk=pk, is_active=True).first()
            if user is None:
                raise PermissionDenied("the account is no longer active")
            # Logging out, a password change elsewhere or an admin's reset ends the session: its sockets too.
            if session is not None and session.session_key and not session.exists(session.session_key):
                raise PermissionDenied("the session has ended")
            self.authorize(user)

        try:
            await database_sync_to_async(check)()
        except (PermissionDenied, Http404) as denied:
            await database_sync_to_async(report_denial)(
                denied, user=self.scope["user"], path=self.scope.get("path", "")
            )
            await self.send_json({"type": "error", "detail": "permission revoked"})
            await self.close(code=CLOSE_FORBIDDEN)
            return False
        return True

    async def joined(self) -> None:
        """Called once the socket is accepted."""


class HeartbeatConsumer(ConsoleConsumer):
    """Answers {"type": "ping", "seq": n} with a pong that travels through the channel layer.

    The pong goes out as a group message and comes back to this consumer, so a reply proves
    websocket, session auth and the Redis channel layer end to end.
    """

    async def joined(self) -> None:
        self.group = f"heartbeat-user-{self.scope['user'].pk}"
        await self.channel_layer.group_add(self.group, self.channel_name)

    async def disconnect(self, code) -> None:
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content, **kwargs) -> None:
        if not isinstance(content, dict) or content.get("type") != "ping":
            await self.send_json({"type": "error", "detail": 'send {"type": "ping", "seq": <n>}'})
            return
        await self.channel_layer.group_send(self.group, {"type": "heartbeat.pong", "seq": content.get("seq")})

    async def heartbeat_pong(self, event) -> None:
        await self.send_json({"type": "pong", "seq": event.get("seq"), "at": timezone.now().isoformat()})
