"""Forms of the keys, service accounts and team quotas pages. They parse input; the services in
deployments.gateway.keys apply the rules and raise field errors that land on these fields (same names)."""

from __future__ import annotations

import re

from django import forms
from django.conf import settings
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from console.accounts.selectors import team_list
from console.forms import StyledMixin
from deployments.gateway import key_selectors
from deployments.gateway.keys import user_teams
from deployments.gateway.models import ServiceAccount


def split_sources(text: str) -> list[str]:
    """Addresses and networks typed one per line, or separated by commas or spaces."""
    return [part for part in re.split(r"[\s,]+", text or "") if part]


def limit_field(label) -> forms.IntegerField:
    return forms.IntegerField(label=label, required=False, min_value=1, help_text=_("Empty: no limit."))


class LimitsMixin:
    """The three limits (requests per minute, tokens per minute, tokens per day) as the services name them."""

    def limits(self) -> dict[str, int | None]:
        return {name: self.cleaned_data.get(name) for name in ("rpm", "tpm", "tpd")}


class KeyScopeForm(LimitsMixin, StyledMixin, forms.Form):
    """What a key reaches and how much: shared by the create and edit forms."""

    name = forms.CharField(label=_("Name"), max_length=100, help_text=_("What calls with it, e.g. the app's name."))
    all_deployments = forms.BooleanField(
        label=_("Every deployment the owner may use (follows the owner's grants as they change)"), required=False
    )
    deployments = forms.ModelMultipleChoiceField(
        label=_("Deployments"),
        queryset=None,
        required=False,
        help_text=_("The deployments the key may call, when not every one."),
    )
    team = forms.ModelChoiceField(
        label=_("Team"),
        queryset=None,
        required=False,
        help_text=_("Whose quota the key's calls count against."),
    )
    allowed_sources = forms.CharField(
        label=_("Allowed source addresses"),
        required=False,
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": "10.0.0.0/8\n192.0.2.7"}),
        help_text=_("IP addresses or CIDR networks, one per line; empty: from anywhere."),
    )
    rpm = limit_field(_("Requests per minute"))
    tpm = limit_field(_("Tokens per minute"))
    tpd = limit_field(_("Tokens per day"))

    def __init__(self, *args, owner=None, account: ServiceAccount | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["deployments"].queryset = key_selectors.usable_deployments(user=owner, account=account)
        if account is not None:  # a service account's keys count against its team
            del self.fields["team"]
            self.fields["all_deployments"].label = _("Every deployment the team may use (follows its grants)")
        else:
            self.fields["team"].queryset = user_teams(owner) if owner is not None else team_list().none()

    def sources(self) -> list[str]:
        return split_sources(self.cleaned_data.get("allowed_sources", ""))


class KeyCreateForm(KeyScopeForm):
    days = forms.IntegerField(label=_("Expires after (days)"), required=False, min_value=1)
    field_order = ["name", "days", "all_deployments", "deployments", "team", "allowed_sources", "rpm", "tpm", "tpd"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        days = self.fields["days"]
        days.initial = settings.INFERENCE_KEY_DEFAULT_DAYS
        days.help_text = gettext("At most %(days)d days.") % {"days": settings.INFERENCE_KEY_MAX_DAYS}


class KeyEditForm(KeyScopeForm):
    """A key's scope, sources and limits (its value and expiry never change)."""

    @classmethod
    def initial_for(cls, key) -> dict:
        return {
            "name": key.name,
            "all_deployments": key.all_deployments,
            "deployments": list(key.deployments.values_list("pk", flat=True)),
            "team": key.team_id,
            "allowed_sources": "\n".join(key.allowed_sources or []),
            "rpm": key.requests_per_minute,
            "tpm": key.tokens_per_minute,
            "tpd": key.tokens_per_day,
        }


class ServiceAccountForm(StyledMixin, forms.Form):
    name = forms.SlugField(
        label=_("Name"), max_length=63, help_text=_("Lowercase letters, digits and hyphens, e.g. billing-bot.")
    )
    team = forms.ModelChoiceField(label=_("Owning team"), queryset=None)
    description = forms.CharField(label=_("Description"), max_length=255, required=False)

    def __init__(self, *args, user, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["team"].queryset = key_selectors.managed_teams(user=user)


class TeamQuotaForm(LimitsMixin, StyledMixin, forms.Form):
    team = forms.ModelChoiceField(label=_("Team"), queryset=None)
    rpm = limit_field(_("Requests per minute"))
    tpm = limit_field(_("Tokens per minute"))
    tpd = limit_field(_("Tokens per day"))

    def __init__(self, *args, user, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["team"].queryset = key_selectors.managed_teams(user=user)
