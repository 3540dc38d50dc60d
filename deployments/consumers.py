"""Websocket consumers of the deployments app: a job's output, live (built on console.streams), and the
playground of a running deployment."""

from __future__ import annotations

from channels.db import database_sync_to_async
from django.core.exceptions import PermissionDenied
from django.http import Http404

from console import roles
from console.consumers import ConsoleConsumer
from console.permissions import can, require
from console.streams import StreamConsumer
from deployments.models import Job, JobLogLine

CLOSE_NOT_FOUND = 4404


class JobStreamConsumer(StreamConsumer):
    """/ws/jobs/<id>/: a job's numbered lines (log, progress, events), backlog first, then live, for
    everyone who may view jobs. A job that does not exist closes with 4404, but only for users who may
    view jobs at all (the others get the 4401/4403 of every consumer, so nothing is revealed)."""

    permission_action = roles.VIEW

    @property
    def job_id(self) -> int:
        return int(self.scope["url_route"]["kwargs"]["job_id"])

    async def connect(self) -> None:
        if await database_sync_to_async(self._missing_job_for_a_viewer)():
            await self.close(code=CLOSE_NOT_FOUND)
            return
        await super().connect()

    def _missing_job_for_a_viewer(self) -> bool:
        user = self.scope.get("user")
        viewer = user is not None and user.is_authenticated and can(user, self.permission_action)
        return viewer and not Job.objects.filter(pk=self.job_id).exists()

    def stream(self) -> str:
        return Job(pk=self.job_id).stream

    def backlog(self, after: int, limit: int) -> list[dict]:
        lines = JobLogLine.objects.filter(job_id=self.job_id, seq__gt=after).order_by("seq")[:limit]
        return [line.as_item() for line in lines]


class PlaygroundConsumer(ConsoleConsumer):
    """/ws/deployments/<id>/playground/: send {"type": "generate", "mode": "completion"|"chat", "prompt" or
    "messages", "parameters"}; receive {"type": "token", "text"} events, then {"type": "end", ...counts}.
    Needs use_deployment on that deployment (engineers by grant); each use is audited."""

    permission_action = roles.USE_DEPLOYMENT

    async def connect(self) -> None:
        from audit.denials import record_denial
        from console.consumers import CLOSE_FORBIDDEN, CLOSE_UNAUTHENTICATED

        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        deployment = await database_sync_to_async(self._deployment)()
        if deployment is None:
            await self.close(
                code=CLOSE_NOT_FOUND if await database_sync_to_async(can)(user, roles.VIEW) else CLOSE_FORBIDDEN
            )
            return
        try:
            await database_sync_to_async(require)(user, roles.USE_DEPLOYMENT, deployment)
        except (PermissionDenied, Http404) as denied:
            await database_sync_to_async(record_denial)(denied, user=user, path=self.scope.get("path", ""))
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.busy = False
        await self.accept()

    def _deployment(self):
        from deployments.models import Deployment

        return (
            Deployment.objects.select_related("spec")
            .filter(pk=int(self.scope["url_route"]["kwargs"]["deployment_id"]))
            .first()
        )

    async def receive_json(self, content, **kwargs) -> None:
        from console.errors import ApplicationError
        from deployments import playground

        if not isinstance(content, dict) or content.get("type") != "generate":
            await self.send_json({"type": "error", "detail": 'send {"type": "generate", ...}'})
            return
        if self.busy:
            await self.send_json({"type": "error", "detail": "one generation at a time"})
            return
        self.busy = True
        deployment = await database_sync_to_async(self._deployment)()
        mode = content.get("mode", "completion")
        summary: dict = {}
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
        except ApplicationError as error:
            await self.send_json({"type": "error", "detail": error.message, "field": error.field})
        except Exception as exc:  # the server's own error (overloaded, validation, connection)
            await self.send_json({"type": "error", "detail": f"{type(exc).__name__}: {exc}"})
        finally:
            self.busy = False
        if summary:
            await database_sync_to_async(playground.record_use)(
                self.scope["user"],
                deployment,
                mode=mode,
                summary=summary,
                prompt=str(content.get("prompt") or ""),
                messages=content.get("messages"),
            )
