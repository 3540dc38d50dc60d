from django.urls import path

from audit.streams import AuditStreamConsumer
from console import consumers

websocket_urlpatterns = [
    path("ws/heartbeat/", consumers.HeartbeatConsumer.as_asgi()),
    path("ws/audit/", AuditStreamConsumer.as_asgi()),
]
