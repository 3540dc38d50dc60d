from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class DeploymentsConfig(AppConfig):
    name = "deployments"
    verbose_name = _("Deployments")

    def ready(self) -> None:
        from huggingface_hub import configure_http_backend

        from deployments.registry.endpoints import session_factory

        configure_http_backend(backend_factory=session_factory)  # guarded sessions survive huggingface_hub's resets
