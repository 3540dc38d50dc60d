from django.urls import path

from audit.streams import AuditStreamConsumer
from console import consumers
from deployments.jobs.consumers import JobStreamConsumer
from deployments.serving.consumers import PlaygroundConsumer

websocket_urlpatterns = [
    path("ws/heartbeat/", consumers.HeartbeatConsumer.as_asgi()),
    path("ws/audit/", AuditStreamConsumer.as_asgi()),
    path("ws/jobs/<int:job_id>/", JobStreamConsumer.as_asgi()),
    path("ws/deployments/<int:deployment_id>/playground/", PlaygroundConsumer.as_asgi()),
]
