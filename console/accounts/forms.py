"""Accounts forms. They validate input; services apply the rules and raise field errors."""

from __future__ import annotations

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.urls import reverse_lazy
from django.utils.translation import gettext_lazy as _

from console import roles
from console.accounts.models import ApiToken, Credential
from console.forms import StyledMixin

User = get_user_model()

ROLE_CHOICES = [(name, label) for name, label in roles.ROLE_LABELS.items()]


class UserCreateForm(StyledMixin, forms.Form):
    username = forms.CharField(label=_("Username"), max_length=150)
    email = forms.EmailField(label=_("Email"), required=False)
    password = forms.CharField(label=_("First password"), widget=forms.PasswordInput, strip=False)
    roles = forms.MultipleChoiceField(
        label=_("Roles"), choices=ROLE_CHOICES, required=False, widget=forms.CheckboxSelectMultiple
    )


class UserAccessForm(StyledMixin, forms.Form):
    roles = forms.MultipleChoiceField(
        label=_("Roles"), choices=ROLE_CHOICES, required=False, widget=forms.CheckboxSelectMultiple
    )
    is_active = forms.BooleanField(label=_("Can log in"), required=False)


class GrantForm(StyledMixin, forms.Form):
    """One action on one object for a user or a team; the object is picked by name from a list that filters as one
    types (by id from the revoke buttons)."""

    user = forms.ModelChoiceField(
        label=_("User"), queryset=User.objects.order_by("username"), required=False, to_field_name="username"
    )
    team = forms.ModelChoiceField(
        label=_("Team"),
        queryset=Group.objects.exclude(name__in=list(roles.ROLES)),
        required=False,
        to_field_name="name",
    )
    action = forms.ChoiceField(label=_("Action"), choices=list(roles.ACTIONS.items()))
    target_type = forms.ChoiceField(label=_("On"), choices=list(roles.GRANT_TARGET_LABELS.items()))
    target_name = forms.CharField(
        label=_("Object"),
        max_length=200,
        required=False,
        widget=forms.TextInput(
            attrs={
                "class": "form-control",
                "list": "grant-target-options",
                "autocomplete": "off",
                "data-suggest-url": reverse_lazy("api:grant-targets"),
                "data-suggest-param": "search",
                "data-suggest-value": "name",
                "data-suggest-with": "target_type=#id_target_type",
            }
        ),
        help_text=_("Type part of its name and pick it from the list."),
    )
    target_id = forms.CharField(max_length=64, required=False, widget=forms.HiddenInput)

    def clean(self):
        data = super().clean()
        if bool(data.get("user")) == bool(data.get("team")):
            raise forms.ValidationError(_("Choose either a user or a team."))
        if not data.get("target_name") and not data.get("target_id"):
            self.add_error("target_name", _("Choose the object by its name."))
        return data


class TokenCreateForm(StyledMixin, forms.Form):
    name = forms.CharField(label=_("Name"), max_length=100, help_text=_("What the token is for, e.g. 'CI pipeline'."))
    expires_at = forms.DateTimeField(
        label=_("Expires"),
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        help_text=_("Empty: 90 days from now."),
    )
    scope = forms.TypedChoiceField(
        label=_("Scope"),
        choices=ApiToken.Scope.choices,
        initial=ApiToken.Scope.WRITE,
        required=False,
        empty_value=ApiToken.Scope.WRITE,
        help_text=_("A read-only token can read everything you may read and change nothing."),
    )


class CredentialForm(StyledMixin, forms.ModelForm):
    value = forms.CharField(
        label=_("Secret value"),
        widget=forms.PasswordInput(render_value=False),
        strip=True,
        help_text=_("Stored encrypted. It is never shown again."),
    )

    class Meta:
        model = Credential
        fields = ["name", "kind", "description", "team"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["team"].queryset = Group.objects.exclude(name__in=list(roles.ROLES))
        if self.instance.pk:
            self.fields["value"].required = False
            self.fields["value"].help_text = _("Leave empty to keep the stored value.")


class PasswordChangeForm(StyledMixin, forms.Form):
    current_password = forms.CharField(
        label=_("Current password"),
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )
    new_password = forms.CharField(
        label=_("New password"),
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=_("At least 12 characters, not a common password, not all digits, not like your username."),
    )
    new_password_again = forms.CharField(
        label=_("New password, again"),
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def clean(self):
        data = super().clean()
        if data.get("new_password") and data.get("new_password_again") != data["new_password"]:
            self.add_error("new_password_again", _("The two new passwords differ."))
        return data


class PasswordResetForm(StyledMixin, forms.Form):
    """An admin's temporary password for someone else."""

    password = forms.CharField(
        label=_("Temporary password"),
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=_("Its holder must change it at the next login; their open sessions end now."),
    )
    revoke_tokens = forms.BooleanField(
        label=_("Also revoke their API tokens"),
        required=False,
        help_text=_("When the old password may have leaked."),
    )


class TeamForm(StyledMixin, forms.Form):
    """Create or rename a team (the service checks the name)."""

    name = forms.CharField(
        label=_("Team name"),
        max_length=150,
        widget=forms.TextInput(attrs={"class": "form-control", "autocomplete": "off"}),
        help_text=_("Letters, digits, spaces, '-', '_' and '.'; not a role name."),
    )


class TeamMemberForm(StyledMixin, forms.Form):
    """Add a member by username, chosen from a list that filters as one types."""

    username = forms.ModelChoiceField(
        label=_("Username"),
        queryset=User.objects.filter(is_active=True),
        to_field_name="username",
        widget=forms.TextInput(
            attrs={
                "class": "form-control",
                "list": "user-options",
                "autocomplete": "off",
                "data-suggest-url": reverse_lazy("api:user-list"),
                "data-suggest-param": "search",
                "data-suggest-value": "username",
            }
        ),
        error_messages={"invalid_choice": _("No active user has this username.")},
    )
