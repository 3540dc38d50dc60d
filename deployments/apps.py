from django.apps import AppConfig
from django.core import checks
from django.utils.translation import gettext_lazy as _


class DeploymentsConfig(AppConfig):
    name = "deployments"
    verbose_name = _("Deployments")

    def ready(self) -> None:
        from workers.mlenv import check_ml_environment

        checks.register(check_ml_environment)
