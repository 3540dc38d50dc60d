from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class AuditConfig(AppConfig):
    name = "audit"
    verbose_name = _("Audit")

    def ready(self) -> None:
        from audit import celery_context, signals, telemetry  # noqa: F401  (signal receivers)

        telemetry.configure()
