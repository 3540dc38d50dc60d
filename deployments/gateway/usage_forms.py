"""The Usage page's filters, one form shared by the page, its CSV export and the API."""

from __future__ import annotations

from datetime import date, timedelta

from django import forms
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from console.forms import UNTIL_BEFORE_SINCE, FilterForm
from deployments.gateway.usage import filter_choices

FIELDS = ("since", "until", "deployment", "team", "key", "adapter", "group_by")
DEFAULT_DAYS = 30
GROUP_LABELS = {
    "deployment": _("Deployment"),
    "key": _("Key"),
    "team": _("Team"),
    "adapter": _("Adapter"),
    "day": _("Day"),
}


class UsageFilterForm(FilterForm):
    """Every field optional. Days are inclusive, in the console's time zone; without `since` the range is the
    DEFAULT_DAYS days up to `until` (today by default), so the cleaned filters (active_filters) always hold since,
    until and group_by. Deployments, teams, keys and adapters are offered from the usage the user may see, so an id
    outside it is refused like any wrong value."""

    since = forms.DateField(label=_("Since"), required=False, help_text=_("First day (YYYY-MM-DD); 30 days back"))
    until = forms.DateField(label=_("Until"), required=False, help_text=_("Last day (YYYY-MM-DD); today by default"))
    deployment = forms.TypedChoiceField(label=_("Deployment"), required=False, coerce=int, empty_value=None)
    team = forms.TypedChoiceField(label=_("Team"), required=False, coerce=int, empty_value=None)
    key = forms.TypedChoiceField(label=_("Key"), required=False, coerce=int, empty_value=None)
    adapter = forms.ChoiceField(label=_("Adapter"), required=False, help_text=_("One adapter, or the base model"))
    group_by = forms.ChoiceField(label=_("Group by"), required=False, choices=list(GROUP_LABELS.items()))

    def __init__(self, *args, user, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for name, choices in filter_choices(user=user).items():
            self.fields[name].choices = [("", _("any")), *choices]
        for name in ("since", "until"):
            self.fields[name].widget.input_type = "date"

    def clean(self) -> dict:
        cleaned = super().clean()
        if self.errors:
            return cleaned
        until = cleaned.get("until") or timezone.localdate()
        since = cleaned.get("since")
        if since is None:
            try:
                since = until - timedelta(days=DEFAULT_DAYS - 1)
            except OverflowError:
                since = date.min
        if until < since:
            self.add_error("until", UNTIL_BEFORE_SINCE)
        cleaned.update(since=since, until=until, group_by=cleaned.get("group_by") or "deployment")
        # The page shows the range it reports on, defaults included.
        self.data = self.data.copy()
        for name in ("since", "until", "group_by"):
            if not self.data.get(name):
                self.data[name] = cleaned[name].isoformat() if isinstance(cleaned[name], date) else cleaned[name]
        return cleaned
