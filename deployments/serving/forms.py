"""Deployment forms. They parse input into the spec dict the services take; the services apply the rules
(spec checks, the planner's verdict) and raise field errors, which land on these fields."""

from __future__ import annotations

import json

from django import forms
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from console import roles
from console.accounts.models import Credential
from console.accounts.selectors import team_list
from console.errors import invalid_json
from console.permissions import deploy_scope_teams, has_global, restrict
from deployments.backends import BACKENDS
from deployments.models import AllowedImage, Deployment, DeploymentSpec, Gpu, Host, ModelArtifact
from deployments.registry.forms import StyledForm
from deployments.serving import form_backends
from deployments.serving.form_backends import BACKEND_FIELDS, BackendSelect
from deployments.serving.models import DEPLOYMENT_NAME
from deployments.serving.specs import spec_values

# Inputs the user types as numbers; empty means "the server's default" (or the planner's choice for num_shard).
TOKEN_FIELDS = ("max_input_tokens", "max_total_tokens", "max_batch_prefill_tokens")
VLLM_FIELDS = ("gpu_memory_utilization", "max_model_len", "max_num_seqs", "max_num_batched_tokens")


def _choices(name: str) -> list[tuple[str, str]]:
    return list(DeploymentSpec._meta.get_field(name).choices)


class ArtifactField(forms.ModelChoiceField):
    """A copy of a model on a host, shown as repo@commit on host."""

    def label_from_instance(self, artifact: ModelArtifact) -> str:
        label = gettext("%(repo)s@%(commit)s on %(host)s") % {
            "repo": artifact.repo.repo_id,
            "commit": (artifact.repo.commit or "?")[:10],
            "host": artifact.host.name,
        }
        if artifact.status != ModelArtifact.Status.READY:
            label += f" ({artifact.get_status_display()})"
        return label


class JsonField(forms.CharField):
    """JSON text for an object or a list (extra environment, LoRA adapters); empty is the empty value."""

    widget = forms.Textarea

    def __init__(self, *, kind: type, **kwargs) -> None:
        self.kind = kind
        super().__init__(**kwargs)

    def to_python(self, value):
        text = (super().to_python(value) or "").strip()
        if not text:
            return self.kind()
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(invalid_json(exc)) from None
        if not isinstance(parsed, self.kind):
            raise forms.ValidationError(
                gettext("Write a JSON object {…}.") if self.kind is dict else gettext("Write a JSON list […].")
            )
        return parsed

    def prepare_value(self, value):
        if isinstance(value, dict | list):
            return json.dumps(value, indent=2) if value else ""
        return value


def any_gpu_online() -> bool:
    """Whether some online (or hand-registered) host has a GPU placement may use, as the planner counts them."""
    return Gpu.objects.filter(
        host__status__in=[Host.Status.ONLINE, Host.Status.MANUAL], health__in=[Gpu.Health.OK, Gpu.Health.UNKNOWN]
    ).exists()


def deployable_artifacts():
    return (
        ModelArtifact.objects.filter(status__in=[ModelArtifact.Status.READY, ModelArtifact.Status.DOWNLOADING])
        .select_related("repo", "host")
        .order_by("repo__repo_id", "host__name")
    )


class SpecForm(StyledForm):
    """The fields of a spec version. `to_spec()` gives the dict clean_spec, deployment_create and spec_update
    take. GPUs are chosen by row (checkboxes per host); the spec stores their indexes on the model's host."""

    artifact = ArtifactField(
        label=_("Model"),
        queryset=None,
        help_text=_("A copy on a host (ready or downloading); the server runs on that host."),
    )
    backend = forms.ChoiceField(
        label=_("Serving backend"),
        choices=form_backends.registered,
        initial=DeploymentSpec.Backend.TGI,
        required=False,  # empty: TGI, as before there was a choice
        help_text=_("The inference server; the limits below are the chosen one's own."),
    )
    device = forms.ChoiceField(label=_("Device"), choices=_choices("device"), initial=DeploymentSpec.Device.GPU)
    quantize = forms.ChoiceField(
        label=_("Quantization"), choices=_choices("quantize"), required=False, widget=BackendSelect
    )
    dtype = forms.ChoiceField(label=_("dtype"), choices=_choices("dtype"), required=False, widget=BackendSelect)
    kv_cache_dtype = forms.ChoiceField(
        label=_("KV cache dtype"), choices=_choices("kv_cache_dtype"), required=False, widget=BackendSelect
    )
    num_shard = forms.IntegerField(
        label=_("GPUs (num_shard)"),
        required=False,
        min_value=1,
        max_value=16,
        help_text=_("Empty: the planner's smallest set."),
    )
    gpu_indexes = forms.ModelMultipleChoiceField(
        label=_("Chosen GPUs"),
        queryset=None,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text=_("None checked: placed automatically on the model's host."),
    )
    max_input_tokens = forms.IntegerField(label=_("Max input tokens"), required=False, min_value=1)
    max_total_tokens = forms.IntegerField(label=_("Max total tokens"), required=False, min_value=2)
    max_batch_prefill_tokens = forms.IntegerField(label=_("Max batch prefill tokens"), required=False, min_value=1)
    replicas = forms.IntegerField(
        label=_("Replicas"),
        required=False,  # empty: one
        min_value=1,
        max_value=8,
        initial=1,
        help_text=_("Servers of this spec, each placed on GPUs of its own; the gateway balances between them."),
    )
    max_concurrent_requests = forms.IntegerField(label=_("Max concurrent requests"), min_value=1, initial=128)
    cuda_memory_fraction = forms.FloatField(label=_("CUDA memory fraction"), min_value=0.05, max_value=1.0, initial=1.0)
    gpu_memory_utilization = form_backends.vllm_field("gpu_memory_utilization")
    max_model_len = form_backends.vllm_field("max_model_len")
    max_num_seqs = form_backends.vllm_field("max_num_seqs")
    max_num_batched_tokens = form_backends.vllm_field("max_num_batched_tokens")
    image = forms.ChoiceField(
        label=_("Image"),
        required=False,
        help_text=_("From the allowed images (docker hosts). Empty: the backend's default."),
    )
    extra_env = JsonField(
        kind=dict,
        label=_("Extra environment (JSON)"),
        required=False,
        widget=forms.Textarea(attrs={"rows": 2, "spellcheck": "false"}),
        help_text=_('{"NAME": "value"}; allow-listed variable names only.'),
    )
    lora_adapters = JsonField(
        kind=list,
        label=_("LoRA adapters (JSON)"),
        required=False,
        widget=forms.Textarea(attrs={"rows": 2, "spellcheck": "false"}),
        help_text=_('[{"name": "support", "path": "/models/adapters/support"}]'),
    )
    credential = forms.ModelChoiceField(
        label=_("Hugging Face token"),
        queryset=None,
        required=False,
        help_text=_("For gated models the server fetches from the Hub."),
    )

    def __init__(self, *args, user, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["artifact"].queryset = deployable_artifacts()
        self.fields["gpu_indexes"].queryset = Gpu.objects.select_related("host").order_by("host__name", "index")
        images = AllowedImage.objects.order_by("reference").values_list("reference", flat=True)
        self.fields["image"].choices = [("", gettext("backend default")), *((ref, ref) for ref in images)]
        tokens = Credential.objects.filter(kind=Credential.Kind.HF_TOKEN).order_by("name")
        self.fields["credential"].queryset = restrict(tokens, user, roles.ADD_MODEL)
        for name in ("extra_env", "lora_adapters"):
            self.fields[name].widget.attrs["class"] = "form-control font-monospace"
        if not self.is_bound and "device" not in self.initial and not any_gpu_online():
            # Nothing to place a GPU server on: start from what can run (the planner reads this field).
            self.fields["device"].initial = DeploymentSpec.Device.CPU
        for name in form_backends.CHOICE_FLAGS:
            values = [str(value) for value, _label in self.fields[name].choices]
            self.fields[name].widget.offered = form_backends.option_backends(name, values)
        chosen = self.chosen_backend()
        for name in BACKEND_FIELDS:  # read by templates/serving/_field.html
            readers = form_backends.readers(name)
            field = self.fields[name]
            field.gated, field.backends = True, " ".join(readers)
            field.hidden_for_backend = chosen not in readers
            # Without the page's script every field shows: say whose each one is where not every backend's.
            partial = len(readers) < len(BACKENDS)
            field.backend_note = ", ".join(BACKENDS[key].label for key in readers) if partial else ""

    def chosen_backend(self) -> str:
        """The backend the form is for: the posted one, else the initial one (TGI when nothing says)."""
        if self.is_bound:
            return self.data.get(self.add_prefix("backend")) or DeploymentSpec.Backend.TGI
        return self.initial.get("backend") or DeploymentSpec.Backend.TGI

    def full_clean(self) -> None:
        # A field only other backends read is left as if it were never posted: a value typed before switching
        # backend (or kept by a browser without the page's script) is neither checked nor saved.
        backend = self.chosen_backend()
        if self.is_bound and backend in BACKENDS:
            data = self.data.copy()
            for name in BACKEND_FIELDS:
                if not form_backends.reads(backend, name):
                    key = self.add_prefix(name)
                    initial = self.fields[name].initial
                    if key in data or initial is not None:
                        data[key] = "" if initial is None else str(initial)
            self.data = data
        super().full_clean()

    def gpu_rows(self) -> list[dict]:
        """The GPU checkboxes with their host, so the page shows only the chosen model's host."""
        chosen = {str(v) for v in (self["gpu_indexes"].value() or [])}
        return [
            {
                "pk": gpu.pk,
                "host": gpu.host_id,
                "host_name": gpu.host.name,
                "index": gpu.index,
                "name": gpu.name,
                "memory": gpu.memory_total,
                "checked": str(gpu.pk) in chosen,
            }
            for gpu in self.fields["gpu_indexes"].queryset
        ]

    def artifact_hosts(self) -> dict[str, int]:
        return {str(a.pk): a.host_id for a in self.fields["artifact"].queryset}

    def clean(self):
        data = super().clean()
        artifact, gpus = data.get("artifact"), data.get("gpu_indexes") or []
        if artifact is not None and any(gpu.host_id != artifact.host_id for gpu in gpus):
            self.add_error(
                "gpu_indexes", gettext("Choose GPUs of %(host)s, where the model is.") % {"host": artifact.host.name}
            )
        backend = data.get("backend") or DeploymentSpec.Backend.TGI
        for name in form_backends.CHOICE_FLAGS:
            if data.get(name) and backend in BACKENDS and data[name] not in form_backends.offered_values(backend, name):
                self.add_error(
                    name,
                    gettext("%(backend)s does not offer %(value)s.")
                    % {"backend": BACKENDS[backend].label, "value": data[name]},
                )
        return data

    def to_spec(self) -> dict:
        data = self.cleaned_data
        spec = {
            name: data.get(name)
            for name in (
                "device",
                "quantize",
                "dtype",
                "kv_cache_dtype",
                "num_shard",
                *TOKEN_FIELDS,
                "replicas",
                "max_concurrent_requests",
                "cuda_memory_fraction",
                *VLLM_FIELDS,
                "image",
                "extra_env",
                "lora_adapters",
            )
        }
        spec["backend"] = data.get("backend") or DeploymentSpec.Backend.TGI
        spec["artifact"] = data["artifact"].pk
        spec["gpu_indexes"] = sorted(gpu.index for gpu in data.get("gpu_indexes") or [])
        spec["credential"] = data["credential"].pk if data.get("credential") else None
        for name in ("quantize", "dtype", "kv_cache_dtype", "image"):
            spec[name] = spec[name] or ""
        # Another backend's fields are cleared, not left out: an edit merges the spec into the current version,
        # whose values for the backend it leaves would otherwise stay.
        for name in BACKEND_FIELDS:
            if not form_backends.reads(spec["backend"], name):
                spec[name] = form_backends.unset_value(name)
        return spec

    @classmethod
    def initial_from(cls, spec: DeploymentSpec) -> dict:
        """A spec version as form values (GPU indexes back to the rows of the model's host)."""
        values = spec_values(spec)
        values.update({name: getattr(spec, name) for name in ("backend", *VLLM_FIELDS)})
        values["gpu_indexes"] = list(
            Gpu.objects.filter(host=spec.artifact.host_id, index__in=spec.gpu_indexes or []).values_list(
                "pk", flat=True
            )
        )
        return values


class DeploymentSettingsMixin(forms.Form):
    """The deployment's environment and what the inference log keeps of its calls (deployments.serving.environment
    says what changing them needs). Left out of a post: the default for a new deployment, unchanged on an edit."""

    environment = forms.ChoiceField(
        label=_("Environment"),
        choices=Deployment.Environment.choices,
        initial=Deployment.Environment.DEVELOPMENT,
        required=False,
        help_text=_("Production: launch, edits, rollbacks, stop and delete wait for another admin's approval."),
    )
    prompt_retention = forms.ChoiceField(
        label=_("Prompt retention"),
        choices=Deployment.PromptRetention.choices,
        initial=Deployment.PromptRetention.NONE,
        required=False,
        help_text=_("What the inference log keeps of each call through the gateway; only data viewers read the text."),
    )


class DeploymentCreateForm(DeploymentSettingsMixin, SpecForm):
    name = forms.CharField(
        label=_("Name"),
        max_length=63,
        validators=[DEPLOYMENT_NAME],
        help_text=_("Lowercase letters, digits and hyphens; it names the server."),
    )
    team = forms.ModelChoiceField(label=_("Owning team"), queryset=None, required=False)
    restart_policy = forms.ChoiceField(
        label=_("Restart policy"), choices=Deployment.RestartPolicy.choices, initial=Deployment.RestartPolicy.ON_FAILURE
    )

    field_order = ["artifact", "name", "team", "restart_policy"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["team"].queryset = team_list()
        user = kwargs.get("user")
        if user is not None and not has_global(user, roles.DEPLOY):
            # Deploying by a team's grant: the deployment belongs to one of those teams.
            self.fields["team"].queryset = team_list().filter(pk__in=deploy_scope_teams(user))
            self.fields["team"].required = True
            self.fields["team"].help_text = _("Your team's grant lets it deploy on the hosts an admin named.")

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip().lower()
        # deployment_create refuses it too; saying so at the review spares a refused "Deploy".
        if Deployment.objects.filter(name=name).exists():
            raise forms.ValidationError(gettext("A deployment named %(name)s exists.") % {"name": name})
        return name


class DeploymentEditForm(DeploymentSettingsMixin, SpecForm):
    note = forms.CharField(
        label=_("Change note"),
        max_length=255,
        required=False,
        help_text=_("Why this version; shown in the version list."),
    )


class RollbackForm(forms.Form):
    version = forms.IntegerField(min_value=1)


class DeploymentFilterForm(StyledForm):
    small = True
    q = forms.CharField(label=_("Name or model"), required=False)
    state = forms.ChoiceField(
        label=_("State"), required=False, choices=[("", _("All states")), *Deployment.State.choices]
    )


class ImageForm(StyledForm):
    reference = forms.CharField(
        label=_("Image"), max_length=255, help_text=_("e.g. ghcr.io/huggingface/text-generation-inference:3.3.5")
    )
    digest = forms.CharField(
        label=_("Digest"),
        max_length=80,
        required=False,
        help_text=_("sha256:… to pin the image; empty: the tag as it is."),
    )
    note = forms.CharField(label=_("Note"), max_length=255, required=False)
