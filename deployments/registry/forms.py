"""Model registry forms. They parse input; the services in deployments.registry.services apply the rules."""

from __future__ import annotations

import re

from django import forms
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from console import roles
from console.accounts.models import Credential
from console.errors import ApplicationError
from console.forms import StyledMixin
from console.permissions import restrict
from deployments.models import Host, ModelArtifact, ModelSource
from deployments.registry.names import IMPORT_NAME_MAX, import_name
from deployments.serving.models import DEPLOYMENT_NAME


def hosts_for_models():
    """Hosts a model can be put on: online (an agent listens) or registered by hand."""
    return Host.objects.filter(status__in=[Host.Status.ONLINE, Host.Status.MANUAL]).order_by("name")


class StyledForm(StyledMixin, forms.Form):
    """A form whose inputs carry Bootstrap's classes (console.forms.StyledMixin)."""


def split_globs(value: str) -> list[str]:
    return [glob for glob in re.split(r"[\s,]+", value or "") if glob]


class ModelAddForm(StyledForm):
    source = forms.ModelChoiceField(label=_("Source"), queryset=None, empty_label=None)
    repo_id = forms.CharField(
        label=_("Repo id"), max_length=200, help_text=_("As on the Hub, e.g. deepseek-ai/deepseek-llm-7b-base.")
    )
    revision = forms.CharField(
        label=_("Revision"),
        max_length=100,
        required=False,
        initial="main",
        help_text=_("Branch, tag or commit; it is pinned to a commit when added."),
    )
    host = forms.ModelChoiceField(
        label=_("Host"), queryset=None, help_text=_("The files are stored in this host's model store.")
    )
    credential = forms.ModelChoiceField(
        label=_("Hugging Face token"),
        queryset=None,
        required=False,
        help_text=_("For gated or private repos; empty: the source's own token."),
    )
    include = forms.CharField(
        label=_("Only these files"),
        required=False,
        help_text=_("Glob patterns separated by spaces or commas (e.g. *.safetensors *.json); empty: the whole repo."),
    )

    def __init__(self, *args, user, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        sources = ModelSource.objects.exclude(kind=ModelSource.Kind.LOCAL).order_by("name")
        self.fields["source"].queryset = sources
        self.fields["source"].initial = sources.filter(kind=ModelSource.Kind.HUB).values_list("pk", flat=True).first()
        self.fields["host"].queryset = hosts_for_models()
        tokens = Credential.objects.filter(kind=Credential.Kind.HF_TOKEN).order_by("name")
        self.fields["credential"].queryset = restrict(tokens, user, roles.ADD_MODEL)

    def clean_revision(self) -> str:
        return self.cleaned_data["revision"].strip() or "main"

    def clean_include(self) -> list[str]:
        return split_globs(self.cleaned_data["include"])


# The services and the download engine name the token and the endpoint; here they are chosen as these fields.
ADD_FIELD_ALIASES = {"token": "credential", "endpoint": "source"}


def add_error(error: ApplicationError) -> ApplicationError:
    """A model_add error on the input the user chose (the credential, the source)."""
    return ApplicationError(error.message, field=ADD_FIELD_ALIASES.get(error.field, error.field))


class ModelImportForm(StyledForm):
    host = forms.ModelChoiceField(label=_("Host"), queryset=None)
    directory = forms.CharField(
        label=_("Directory"), max_length=500, help_text=_("The absolute path of the model's directory on that host.")
    )
    name = forms.CharField(
        label=_("Name"),
        max_length=IMPORT_NAME_MAX,
        required=False,
        validators=[DEPLOYMENT_NAME],
        help_text=_(
            "How the registry calls it: lowercase letters, digits and hyphens, as a deployment's name; empty: made "
            "from the directory's name."
        ),
    )

    def __init__(self, *args, roots: list[str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["host"].queryset = hosts_for_models()
        # Said before the first try, not only in the refusal: where a model may be imported from.
        self.fields["directory"].help_text = ngettext(
            "The absolute path of the model's directory on that host, inside %(roots)s (MODEL_IMPORT_ROOTS).",
            "The absolute path of the model's directory on that host, inside one of %(roots)s (MODEL_IMPORT_ROOTS).",
            len(roots),
        ) % {"roots": ", ".join(roots)}
        self.fields["directory"].widget.attrs.setdefault("placeholder", roots[0].rstrip("/") + "/…" if roots else "")

    def clean(self):
        data = super().clean()
        if "name" in data:
            data["name"] = import_name(data["name"], data.get("directory", ""))
        return data


class ModelCancelForm(StyledForm):
    delete_partial = forms.TypedChoiceField(
        label=_("Files downloaded so far"),
        coerce=lambda value: value == "1",
        initial="0",
        choices=[("0", _("Keep them, to resume later")), ("1", _("Delete them"))],
        widget=forms.RadioSelect(attrs={"class": "form-check-input"}),
    )


class ModelFilterForm(StyledForm):
    small = True
    q = forms.CharField(label=_("Repo id"), required=False)
    host = forms.ModelChoiceField(
        label=_("Host"),
        queryset=Host.objects.order_by("name"),
        required=False,
        to_field_name="name",
        empty_label=_("All hosts"),
    )
    status = forms.ChoiceField(
        label=_("Status"), required=False, choices=[("", _("All but deleted")), *ModelArtifact.Status.choices]
    )


class SourceForm(StyledForm):
    name = forms.CharField(label=_("Name"), max_length=100)
    kind = forms.ChoiceField(
        label=_("Kind"),
        choices=[
            (ModelSource.Kind.MIRROR, ModelSource.Kind.MIRROR.label),
            (ModelSource.Kind.MODELSCOPE, ModelSource.Kind.MODELSCOPE.label),
        ],
        initial=ModelSource.Kind.MIRROR,
        required=False,  # a form without it adds a Hub-compatible mirror, as before ModelScope was a choice
    )
    endpoint = forms.CharField(
        label=_("Endpoint"),
        max_length=200,
        required=False,
        help_text=_(
            "The mirror's address, e.g. https://hf-mirror.com (like HF_ENDPOINT). For ModelScope, empty means "
            "https://www.modelscope.cn (MODELSCOPE_ENDPOINT), or give a mirror of it. Its host must be on the "
            "allow-list."
        ),
    )
    token = forms.CharField(
        label=_("Access token"),
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False),
        help_text=_("Optional. Stored encrypted; it is never shown again."),
    )


class EndpointForm(StyledForm):
    pattern = forms.CharField(
        label=_("Host or network"),
        max_length=255,
        help_text=_("A host name (hf-mirror.internal, *.corp.example) or a CIDR (10.8.0.0/16)."),
    )
    note = forms.CharField(label=_("Note"), max_length=255, required=False)
