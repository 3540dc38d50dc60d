"""The variants page of a base model: every artifact derived from it with its size, weight memory, quality and speed
against the base's, the seed's claims measured, and "Deploy this one" for users who may deploy. Reading needs what
the model's own page needs (`view`, and the model visible)."""

from __future__ import annotations

from django.shortcuts import render
from django.urls import reverse
from django.views import View

from console import roles
from console.mixins import ConsoleViewMixin
from console.permissions import may_deploy_anywhere
from deployments.models import ModelArtifact
from deployments.quality import variants


def deploy_url(artifact: ModelArtifact) -> str | None:
    """Where "Deploy this one" goes: the deploy form with the model chosen; an adapter deploys from its own page."""
    if artifact.status != ModelArtifact.Status.READY:
        return None
    if artifact.kind == ModelArtifact.Kind.ADAPTER:
        return reverse("model-detail", args=[artifact.pk]) + "#adapter-deploy-form"
    return reverse("deployment-create") + f"?artifact={artifact.pk}"


class VariantsView(ConsoleViewMixin, View):
    """One row per variant of the model (quantized, fine-tuned, adapters, merged), then the seed's claims."""

    permission_action = roles.VIEW
    queryset = ModelArtifact.objects.select_related("repo__source", "host")
    template_name = "quality/variants.html"

    def get(self, request, pk):
        base = self.visible_object(pk)
        table = variants.variant_table(base, user=request.user)
        can_deploy = may_deploy_anywhere(request.user)
        rows = [
            {
                "v": v,
                "kind_label": variants.kind_label(v.kind),
                "indent": "↳" * (v.depth - 1),
                "deploy_url": deploy_url(v.artifact) if can_deploy else None,
            }
            for v in table.variants
        ]
        return render(
            request,
            self.template_name,
            {"base": base, "table": table, "rows": rows, "can_deploy": can_deploy, "claims": table.claims},
        )
