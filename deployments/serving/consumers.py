"""The websocket consumer of the playground of a running deployment."""

from __future__ import annotations

from console import roles
from console.consumers import CLOSE_FORBIDDEN, CLOSE_NOT_FOUND, ConsoleConsumer
from console.errors import ApplicationError
from console.permissions import can, require
from console.stream_db import database_sync_to_async
from deployments.models import Deployment
from deployments.serving import playground


class PlaygroundConsumer(ConsoleConsumer):
    """/ws/deployments/<id>/playground/: send {"type": "generate", "mode": "completion"|"chat", "prompt" or
    "messages", "parameters"}; receive {"type": "token", "text"} events, then {"type": "end", ...counts}.
    Needs use_deployment on that deployment (engineers by grant); each use is audited."""

    permission_action = roles.USE_DEPLOYMENT

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is not None and user.is_authenticated and await database_sync_to_async(self._deployment)() is None:
            await self.close(
                code=CLOSE_NOT_FOUND if await database_sync_to_async(can)(user, roles.VIEW) else CLOSE_FORBIDDEN
            )
            return
        self.busy = False
        await super().connect()

    def authorize(self, user) -> None:
        require(user, roles.USE_DEPLOYMENT, self._deployment())

    def _deployment(self):
        return (
            Deployment.objects.select_related("spec")
            .filter(pk=int(self.scope["url_route"]["kwargs"]["deployment_id"]))
            .first()
        )

    async def receive_json(self, content, **kwargs) -> None:
        if not isinstance(content, dict) or content.get("type") != "generate":
            await self.send_json({"type": "error", "detail": 'send {"type": "generate", ...}'})
            return
        if self.busy:
            await self.send_json({"type": "error", "detail": "one generation at a time"})
            return
        if not await self.still_allowed():  # every generation, not only the connect: a grant can be revoked
            return
        self.busy = True
        deployment = await database_sync_to_async(self._deployment)()
        mode = content.get("mode", "completion")
        summary: dict = {}
        error = ""
        try:
            async for event in playground.run(
                deployment,
                mode=mode,
                prompt=str(content.get("prompt") or ""),
                messages=content.get("messages"),
                parameters=content.get("parameters"),
            ):
                if event["type"] == "end":
                    summary = event
                await self.send_json(event)
        except ApplicationError as failure:
            error = failure.message
            await self.send_json({"type": "error", "detail": failure.message, "field": failure.field})
        except Exception as exc:  # the server's own error (overloaded, validation, connection)
            error = f"{type(exc).__name__}: {exc}"
            await self.send_json({"type": "error", "detail": error})
        finally:
            self.busy = False
        # Every use is audited, with its outcome: a generation that failed is a use too.
        await database_sync_to_async(playground.record_use)(
            self.scope["user"],
            deployment,
            mode=mode,
            summary=summary,
            error=error,
            prompt=str(content.get("prompt") or ""),
            messages=content.get("messages"),
        )
