"""The Jobs page's filters."""

from __future__ import annotations

from django import forms
from django.contrib.auth import get_user_model
from django.utils.translation import gettext_lazy as _

from deployments.models import Job
from deployments.registry.forms import StyledForm

# What jobs work on, as the Jobs page names it (Job.target_type is the target's model label).
TARGET_TYPES: dict[str, str] = {
    "deployments.deployment": _("Deployment"),
    "deployments.modelartifact": _("Model copy"),
    "deployments.healthcheckrun": _("Health check"),
    "deployments.dataset": _("Dataset"),
}


class JobFilterForm(StyledForm):
    small = True
    q = forms.CharField(
        label=_("Search"),
        required=False,
        max_length=200,
        widget=forms.TextInput(attrs={"placeholder": _("Job id, target, who, cause")}),
    )
    kind = forms.ChoiceField(label=_("Kind"), required=False, choices=[("", _("All kinds")), *Job.Kind.choices])
    status = forms.ChoiceField(label=_("State"), required=False, choices=[("", _("All states")), *Job.Status.choices])
    target_type = forms.ChoiceField(
        label=_("Target"), required=False, choices=[("", _("All targets")), *TARGET_TYPES.items()]
    )
    actor = forms.ModelChoiceField(
        label=_("Started by"),
        queryset=get_user_model().objects.none(),
        required=False,
        to_field_name="username",
        empty_label=_("Anyone"),
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Only people who started a job: the list offers no name it could not show in a row anyway.
        starters = Job.objects.filter(actor__isnull=False).values("actor")
        self.fields["actor"].queryset = get_user_model().objects.filter(pk__in=starters).order_by("username")
