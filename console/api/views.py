"""The API's own endpoints: ping (a worker round trip through the broker)."""

from __future__ import annotations

import time

import redis
from celery.exceptions import TimeoutError as CeleryTimeout
from django.utils.translation import gettext as _
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from kombu.exceptions import OperationalError
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from console import roles
from console.dispatch import PING, dispatch
from console.permissions import require

PING_TIMEOUT_SECONDS = 10


class PingView(APIView):
    """Enqueue the Celery `ping` task and wait for a worker's answer."""

    @extend_schema(
        responses={
            200: inline_serializer(
                "Ping",
                {
                    "pong": serializers.BooleanField(),
                    "worker": serializers.CharField(),
                    "at": serializers.DateTimeField(),
                    "round_trip_ms": serializers.FloatField(),
                },
            ),
            503: OpenApiResponse(description="No worker answered in time, or Redis (the broker) is unavailable."),
        }
    )
    def get(self, request):
        require(request.user, roles.VIEW)
        started = time.perf_counter()
        try:
            answer = dispatch(PING).get(timeout=PING_TIMEOUT_SECONDS)
        except (OperationalError, redis.RedisError, OSError):  # the broker away: say so now, not after a hang
            return Response(
                {
                    "detail": _("Redis, the task broker, is unavailable; background work waits until it is back."),
                    "code": "redis_unavailable",
                },
                status=status.HTTP_503_SERVICE_UNAVAILABLE,
            )
        except CeleryTimeout:
            return Response(
                {
                    "detail": f"No Celery worker answered within {PING_TIMEOUT_SECONDS} s. Is the worker running?",
                    "code": "worker_unavailable",
                },
                status=status.HTTP_503_SERVICE_UNAVAILABLE,
            )
        return Response({**answer, "round_trip_ms": round((time.perf_counter() - started) * 1000, 2)})
