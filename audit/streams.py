"""The audit log's live stream (built on console.streams)."""

from __future__ import annotations

from audit.models import AuditEvent
from console import roles
from console.streams import StreamConsumer, StreamHead, publish

STREAM = "audit"


def event_item(event: AuditEvent) -> dict:
    return {"seq": event.id, **event.as_dict()}


def publish_events(events: list[AuditEvent]) -> None:
    publish(STREAM, [event_item(event) for event in events])


class AuditStreamConsumer(StreamConsumer):
    """/ws/audit/: every new audit event, for those who may view the audit log."""

    permission_action = roles.VIEW_DATA

    def stream(self) -> str:
        return STREAM

    def backlog(self, after: int, limit: int) -> list[dict]:
        events = AuditEvent.objects.filter(id__gt=after).order_by("id")[:limit]
        return [event_item(event) for event in events]

    def head(self) -> StreamHead:
        # Ids commit in order (the chain lock), so the highest committed id is the head; the log never ends.
        return StreamHead(AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0)
