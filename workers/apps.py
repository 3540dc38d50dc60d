from django.apps import AppConfig
from django.core import checks

from workers.mlenv import check_ml_environment


class WorkersConfig(AppConfig):
    """Celery tasks and runtimes. workers/__init__.py stays import-free: the ML environment runs
    `python -m workers.jobs...` without Django."""

    name = "workers"
    verbose_name = "Workers"

    def ready(self) -> None:
        checks.register(check_ml_environment)
        # Imported here, not at module level: both need the app registry ready (they import models).
        from workers import agent, handlers  # noqa: F401  (signal receivers; job kinds register on import)
