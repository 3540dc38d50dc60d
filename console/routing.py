from django.urls import path

from console import consumers

websocket_urlpatterns = [
    path("ws/heartbeat/", consumers.HeartbeatConsumer.as_asgi()),
]
