"""ASGI entry point of the inference gateway, a service of its own (docker-compose `gateway`, `make run`):

    uvicorn console.gateway_asgi:application --host 0.0.0.0 --port 8001 --proxy-headers

Django is set up for the ORM and settings only; requests never pass through Django's handler (the gateway is a
plain ASGI application, deployments/gateway/app.py), which keeps the hot path short.
"""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
django.setup()

from audit import telemetry  # noqa: E402  (needs Django set up first)
from deployments.gateway.app import application  # noqa: E402

telemetry.configure()

__all__ = ["application"]
