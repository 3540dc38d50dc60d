"""Websockets follow the same rule as pages: a person holding an admin's temporary password opens none until
they change it (console/accounts/middleware.py is the HTTP side)."""

from __future__ import annotations

from channels.middleware import BaseMiddleware

from console.accounts.selectors import password_change_required
from console.stream_db import database_sync_to_async

CLOSE_PASSWORD_CHANGE_REQUIRED = 4403  # the consumers' "forbidden" code: the page shows the same message


class PasswordChangeRequiredSocketMiddleware(BaseMiddleware):
    """Inside the auth stack: refuses the handshake of a user who must change their password."""

    async def __call__(self, scope, receive, send):
        user = scope.get("user")
        if user is not None and user.is_authenticated and await database_sync_to_async(password_change_required)(user):
            await receive()  # the websocket.connect message
            await send({"type": "websocket.close", "code": CLOSE_PASSWORD_CHANGE_REQUIRED})
            return None
        return await super().__call__(scope, receive, send)
