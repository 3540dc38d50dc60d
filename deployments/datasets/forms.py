"""The dataset form: a name, the owning team (the teams the user may add datasets for), a description; and the form
that imports a version from a Hub dataset repo."""

from __future__ import annotations

from django import forms
from django.contrib.auth.models import Group
from django.utils.translation import gettext_lazy as _

from console import roles
from console.accounts.models import Credential
from console.forms import StyledMixin
from console.permissions import dataset_manager_teams, restrict
from deployments.datasets.models import DATASET_NAME
from deployments.registry.models import ModelSource


class DatasetForm(StyledMixin, forms.Form):
    name = forms.CharField(label=_("Name"), max_length=100, validators=[DATASET_NAME])
    team = forms.ModelChoiceField(label=_("Owning team"), queryset=Group.objects.none())
    description = forms.CharField(label=_("Description"), max_length=500, required=False)

    def __init__(self, *args, user, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        teams = Group.objects.exclude(name__in=list(roles.ROLES)).order_by("name")
        allowed = dataset_manager_teams(user)
        self.fields["team"].queryset = teams if allowed is None else teams.filter(pk__in=allowed)


class HubImportForm(StyledMixin, forms.Form):
    """Import one file of a Hub dataset repo as a new version (deployments.datasets.hub_import)."""

    small = True
    source = forms.ModelChoiceField(label=_("Source"), queryset=ModelSource.objects.none(), empty_label=None)
    repo_id = forms.CharField(
        label=_("Dataset repo"), max_length=200, help_text=_("As on the Hub, e.g. HuggingFaceH4/no_robots.")
    )
    revision = forms.CharField(
        label=_("Revision"),
        max_length=100,
        required=False,
        initial="main",
        help_text=_("Branch, tag or commit; it is pinned to a commit when the import starts."),
    )
    path = forms.CharField(
        label=_("File"),
        max_length=500,
        help_text=_("The file's path in the repo: .jsonl, .json, .csv or .parquet (e.g. data/train.jsonl)."),
    )
    credential = forms.ModelChoiceField(
        label=_("Hugging Face token"),
        queryset=Credential.objects.none(),
        required=False,
        help_text=_("For gated or private repos; empty: the source's own token."),
    )

    def __init__(self, *args, user, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        sources = ModelSource.objects.exclude(kind__in=[ModelSource.Kind.LOCAL, ModelSource.Kind.MODELSCOPE])
        sources = sources.order_by("name")
        self.fields["source"].queryset = sources
        self.fields["source"].initial = sources.filter(kind=ModelSource.Kind.HUB).values_list("pk", flat=True).first()
        tokens = Credential.objects.filter(kind=Credential.Kind.HF_TOKEN).order_by("name")
        self.fields["credential"].queryset = restrict(tokens, user, roles.ADD_MODEL)

    def clean_revision(self) -> str:
        return self.cleaned_data["revision"].strip() or "main"
