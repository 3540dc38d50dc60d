"""The websocket consumer of a job's output, live (built on console.streams)."""

from __future__ import annotations

from channels.db import database_sync_to_async

from console import roles
from console.consumers import CLOSE_NOT_FOUND
from console.permissions import can
from console.streams import StreamConsumer
from deployments.models import Job, JobLogLine


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
