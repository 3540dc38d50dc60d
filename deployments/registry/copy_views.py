"""The "Copy to host…" page of a model: admins (manage_inventory) copy a ready copy to another host through the
console (deployments/registry/copies.py)."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views import View

from console import roles
from console.errors import ApplicationError
from console.forms import apply_error
from console.mixins import ConsoleViewMixin
from deployments.models import ModelArtifact
from deployments.registry.copies import artifact_copy, copy_targets
from deployments.registry.copy_inputs import CopyForm


class ModelCopyView(ConsoleViewMixin, View):
    """Choose the host; two copy jobs (one on each host) move the files, and the new copy's page shows them."""

    permission_action = roles.MANAGE_INVENTORY
    queryset = ModelArtifact.objects.select_related("repo__source", "host")
    template_name = "registry/copy.html"

    def get(self, request, pk):
        artifact = self.visible_object(pk)
        return self._render(request, artifact, CopyForm(targets=copy_targets(artifact)))

    def post(self, request, pk):
        artifact = self.visible_object(pk)
        form = CopyForm(request.POST, targets=copy_targets(artifact))
        if form.is_valid():
            try:
                copy = artifact_copy(actor=request.user, artifact=artifact, host=form.cleaned_data["host"])
            except ApplicationError as error:
                apply_error(form, error)
            else:
                messages.success(
                    request,
                    _("Copy of %(model)s from %(source)s to %(host)s queued.")
                    % {"model": artifact.repo.repo_id, "source": artifact.host.name, "host": copy.host.name},
                )
                return redirect("model-detail", pk=copy.pk)
        return self._render(request, artifact, form, status=400)

    def _render(self, request, artifact, form, status: int = 200):
        return render(request, self.template_name, {"artifact": artifact, "form": form}, status=status)
