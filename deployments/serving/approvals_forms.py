"""Forms of the approval pages: the list's filters and the decision's comment."""

from __future__ import annotations

from django import forms
from django.utils.translation import gettext_lazy as _

from deployments.models import ApprovalRequest
from deployments.registry.forms import StyledForm


class ApprovalFilterForm(StyledForm):
    small = True
    state = forms.ChoiceField(
        label=_("State"), required=False, choices=[("", _("All states")), *ApprovalRequest.State.choices]
    )
    action = forms.ChoiceField(
        label=_("Action"), required=False, choices=[("", _("All actions")), *ApprovalRequest.Action.choices]
    )
    deployment = forms.CharField(label=_("Deployment"), required=False, max_length=63)


class DecisionForm(StyledForm):
    comment = forms.CharField(
        label=_("Comment"),
        required=False,
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text=_("Kept with the decision; a rejection says why."),
    )
