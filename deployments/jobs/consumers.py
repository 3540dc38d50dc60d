"""The websocket consumer of a job's output, live (built on console.streams)."""

from __future__ import annotations

from django.http import Http404

from console import roles
from console.consumers import CLOSE_NOT_FOUND
from console.permissions import can
from console.stream_db import database_sync_to_async
from console.streams import StreamConsumer, StreamHead
from deployments.jobs.selectors import LogView, log_view, require_job_log
from deployments.models import Job, JobLogLine


class JobStreamConsumer(StreamConsumer):
    """/ws/jobs/<id>/: a job's numbered lines (log, progress, events), backlog first, then live, for those who may
    read its output (the rule on its target: a deployment's job for its team, grantees, admins and view_data
    holders), its server's request content masked unless they hold view_data. Both are checked again while the
    socket lives. A job that does not exist closes with 4404, but only for users who may view jobs at all (the
    others get the 4401/4403 of every consumer, so nothing is revealed)."""

    permission_action = roles.VIEW
    view: LogView | None = None

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

    def authorize(self, user) -> None:
        """At connect and at every re-check: may this user read this job's output, and see request content."""
        super().authorize(user)
        job = Job.objects.filter(pk=self.job_id).first()
        if job is None:
            raise Http404("the job is gone")
        require_job_log(user, job)
        fresh = log_view(job, user=user)
        if self.view is not None:
            fresh.carry = self.view.carry
        self.view = fresh

    async def receive_json(self, content, **kwargs) -> None:
        if isinstance(content, dict) and content.get("type") == "subscribe" and not getattr(self, "subscribed", True):
            try:
                after = max(0, int(content.get("after") or 0))
            except (TypeError, ValueError):
                after = 0  # the base class answers the error
            await database_sync_to_async(self.view.start_after)(after)
        await super().receive_json(content, **kwargs)

    async def send_json(self, content, close=False) -> None:
        # Every batch (backlog and live) leaves through here, after the permission re-check: masked for this
        # reader as that check found them.
        if isinstance(content, dict) and content.get("type") == "items" and self.view is not None:
            content = {**content, "items": self.view.items(content["items"])}
        await super().send_json(content, close=close)

    def stream(self) -> str:
        return Job(pk=self.job_id).stream

    def backlog(self, after: int, limit: int) -> list[dict]:
        lines = JobLogLine.objects.filter(job_id=self.job_id, seq__gt=after).order_by("seq")[:limit]
        return [line.as_item() for line in lines]

    def head(self) -> StreamHead:
        # log_seq is raised in the transaction that stores the lines, and the outcome is written after the last
        # lines were stored: a finished job's log_seq is its final seq.
        row = Job.objects.filter(pk=self.job_id).values_list("log_seq", "status").first()
        if row is None:
            return StreamHead(self.last_sent, ended=True)
        return StreamHead(row[0], ended=row[1] in Job.Status.terminal(), status=row[1])
