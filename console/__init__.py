"""The Django project: settings, URLs, ASGI routing, the Celery app, roles and permissions."""

from console.celery import app as celery_app

__all__ = ["celery_app"]
