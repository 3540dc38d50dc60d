"""The dataset form: a name, the owning team (the teams the user may add datasets for), a description."""

from __future__ import annotations

from django import forms
from django.contrib.auth.models import Group
from django.utils.translation import gettext_lazy as _

from console import roles
from console.forms import StyledMixin
from console.permissions import dataset_manager_teams
from deployments.datasets.models import DATASET_NAME


class DatasetForm(StyledMixin, forms.Form):
    name = forms.CharField(label=_("Name"), max_length=100, validators=[DATASET_NAME])
    team = forms.ModelChoiceField(label=_("Owning team"), queryset=Group.objects.none())
    description = forms.CharField(label=_("Description"), max_length=500, required=False)

    def __init__(self, *args, user, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        teams = Group.objects.exclude(name__in=list(roles.ROLES)).order_by("name")
        allowed = dataset_manager_teams(user)
        self.fields["team"].queryset = teams if allowed is None else teams.filter(pk__in=allowed)
