from django.apps import AppConfig


class WorkersConfig(AppConfig):
    """Celery tasks and runtimes. workers/__init__.py stays import-free: the ML environment runs
    `python -m workers.jobs...` without Django."""

    name = "workers"
    verbose_name = "Workers"

    def ready(self) -> None:
        from workers import agent  # noqa: F401  (worker_ready/worker_shutdown receivers)
