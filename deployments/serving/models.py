"""Deployments: a named model server, its versioned specs, and the container images admins allow."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.utils.translation import gettext_lazy as _

from console import roles
from console.fields import EncryptedSecretField
from deployments.backends.tgi.launch import DEVELOPMENT_SERVER_NAME
from deployments.backends.vllm.launch import DEVELOPMENT_SERVER_NAME as VLLM_DEVELOPMENT_SERVER_NAME
from deployments.inventory.models import Host
from deployments.jobs.models import Job
from deployments.registry.models import ModelArtifact

DEPLOYMENT_NAME = RegexValidator(
    r"^[a-z0-9][a-z0-9-]{0,62}$", _("Lowercase letters, digits and hyphens (it names the container).")
)


class AllowedImage(models.Model):
    """A server image admins allow deployments to run, pinned by digest where known."""

    reference = models.CharField(
        _("image"), max_length=255, unique=True, help_text=_("e.g. ghcr.io/huggingface/text-generation-inference:3.3.5")
    )
    digest = models.CharField(
        _("digest"),
        max_length=80,
        blank=True,
        validators=[RegexValidator(r"^(sha256:[0-9a-f]{64})?$", _("sha256:<64 hex digits>"))],
    )
    backend = models.CharField(_("backend"), max_length=20, default="tgi")
    note = models.CharField(_("note"), max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["reference"]
        default_permissions = ()

    def __str__(self) -> str:
        return self.reference

    @property
    def pinned(self) -> str:
        """What the runtime pulls/runs: `repo@sha256:...` when the digest is known."""
        if not self.digest:
            return self.reference
        repository = self.reference.rsplit(":", 1)[0] if ":" in self.reference.rsplit("/", 1)[-1] else self.reference
        return f"{repository}@{self.digest}"


class ServerFields(models.Model):
    """The fields of one server of a deployment, under the same names on the deployment (server 0) and on its
    replicas (DeploymentReplica, 1..N-1), so the serve job and the reconciler handle both alike. The state, its
    deadline, the host and the endpoint are declared on each model (their labels, help and reverse names differ)."""

    gpu_indexes = models.JSONField(_("GPUs"), default=list, blank=True)
    placement_note = models.CharField(_("placement"), max_length=300, blank=True)
    runtime = models.CharField(_("runtime"), max_length=10, blank=True)
    port = models.PositiveIntegerField(_("port"), null=True, blank=True)
    runtime_ref = models.CharField(max_length=100, blank=True)  # container id or pid
    # The server answers only requests carrying this key (TGI's API_KEY). Generated anew at each start,
    # encrypted at rest, sent by the console alone; see workers/handlers/serve.py.
    server_key = EncryptedSecretField(null=True, blank=True, editable=False)
    log_cursor = models.BigIntegerField(default=0)  # how far the server's output was copied into the job log
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    command = models.JSONField(_("command line"), default=list, blank=True)
    # What answers at the endpoint, as its /info says (TGI and its version, or the development server).
    server = models.CharField(_("server"), max_length=200, blank=True)
    failure_cause = models.CharField(_("cause"), max_length=60, blank=True)
    failure_detail = models.TextField(_("what happened"), blank=True)
    next_step = models.TextField(_("next step"), blank=True)
    restart_count = models.PositiveIntegerField(default=0)
    next_restart_at = models.DateTimeField(null=True, blank=True)
    restart_requested = models.BooleanField(default=False)

    class Meta:
        abstract = True


class Deployment(ServerFields):
    """A model server the console keeps in the state its owner asked for."""

    class State(models.TextChoices):
        PENDING = "pending", _("pending")
        PLACING = "placing", _("placing")
        DOWNLOADING = "downloading", _("downloading")
        STARTING = "starting", _("starting")
        RUNNING = "running", _("running")
        STOPPING = "stopping", _("stopping")
        STOPPED = "stopped", _("stopped")
        FAILED = "failed", _("failed")

        @classmethod
        def launching(cls) -> frozenset[str]:
            return frozenset({cls.PENDING, cls.PLACING, cls.DOWNLOADING, cls.STARTING})

        @classmethod
        def holding(cls) -> frozenset[str]:
            """States in which the deployment holds GPUs and (maybe) a server process."""
            return frozenset({cls.PENDING, cls.PLACING, cls.DOWNLOADING, cls.STARTING, cls.RUNNING, cls.STOPPING})

    class RestartPolicy(models.TextChoices):
        NEVER = "never", _("never")
        ON_FAILURE = "on-failure", _("on failure")

    class Environment(models.TextChoices):
        DEVELOPMENT = "development", _("development")
        PRODUCTION = "production", _("production")

    class PromptRetention(models.TextChoices):
        NONE = "none", _("token counts only")
        FULL = "full", _("prompts and completions")

    name = models.SlugField(_("name"), max_length=63, unique=True, validators=[DEPLOYMENT_NAME])
    # Production deployments change only through an approved request (deployments/serving/approvals.py).
    environment = models.CharField(
        _("environment"), max_length=12, choices=Environment.choices, default=Environment.DEVELOPMENT
    )
    # What the inference log keeps of each call through the gateway (text visible only with view_data).
    prompt_retention = models.CharField(
        _("prompt retention"), max_length=8, choices=PromptRetention.choices, default=PromptRetention.NONE
    )
    team = models.ForeignKey(
        Group, verbose_name=_("owning team"), null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    spec = models.ForeignKey(
        "DeploymentSpec",
        verbose_name=_("current spec"),
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    state = models.CharField(_("state"), max_length=12, choices=State.choices, default=State.STOPPED, db_index=True)
    state_changed_at = models.DateTimeField(_("state since"), auto_now_add=True)
    deadline = models.DateTimeField(
        _("deadline"), null=True, blank=True, help_text=_("When the current state must have moved on.")
    )
    restart_policy = models.CharField(
        _("restart policy"), max_length=12, choices=RestartPolicy.choices, default=RestartPolicy.ON_FAILURE
    )
    host = models.ForeignKey(
        Host, verbose_name=_("host"), null=True, blank=True, on_delete=models.PROTECT, related_name="deployments"
    )
    endpoint = models.CharField(
        _("endpoint"),
        max_length=200,
        blank=True,
        help_text=_("Where the console reaches the server (never published openly)."),
    )
    # What needs a person's attention while it runs, beside its state: a GPU it holds failed, its model files were
    # found corrupt. [{"cause", "detail", "next_step", "subject", "at"}]; deployments/monitoring/flags.py keeps them.
    flags = models.JSONField(_("flags"), default=list, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        default_permissions = ()
        permissions = roles.object_permissions("deployments.deployment")

    def __str__(self) -> str:
        return self.name

    @property
    def placement_display(self) -> str:
        """Where it was placed, in the reader's language: "GPU 0,1 on h1", "CPU on vm", and whether the model's
        files were copied there (the serve job's artifact is another copy than the spec's)."""
        if self.host_id is None:
            return ""
        facts = {"host": self.host.name, "gpus": ",".join(map(str, self.gpu_indexes or []))}
        where = _("GPU %(gpus)s on %(host)s") % facts if self.gpu_indexes else _("CPU on %(host)s") % facts
        params = (self.job.params or {}) if self.job_id else {}
        copy = params.get("artifact")
        if copy and self.spec_id and copy != self.spec.artifact_id:
            return _("%(where)s (model files copied to %(host)s)") % {"where": where, "host": self.host.name}
        return str(where)

    @property
    def runs_development_server(self) -> bool:
        """The project's CPU development server answers (serve.py or vllm_serve.py), not the backend it stands in
        for."""
        return self.server.split(" ", 1)[0] in (DEVELOPMENT_SERVER_NAME, VLLM_DEVELOPMENT_SERVER_NAME)

    @property
    def runs_vllm_development_server(self) -> bool:
        """vllm_serve.py answers: the development server speaking vLLM's protocol (the page says which)."""
        return self.server.split(" ", 1)[0] == VLLM_DEVELOPMENT_SERVER_NAME

    @property
    def holder(self) -> str:
        """How GPU reservations and artifact uses name this deployment."""
        return f"deployment:{self.pk}"

    @property
    def labels(self) -> dict[str, str]:
        """Labels on the server (container or process) so runtimes find it again."""
        return {"llmdeploy.managed": "true", "llmdeploy.deployment": str(self.pk), "llmdeploy.name": self.name}


class DeploymentSpec(models.Model):
    """One version of a deployment's configuration. Never edited: an edit makes the next version."""

    class Backend(models.TextChoices):
        TGI = "tgi", _("text-generation-inference")
        VLLM = "vllm", "vLLM"

    class Quantize(models.TextChoices):
        NONE = "", _("none")
        BITSANDBYTES = "bitsandbytes", "bitsandbytes (8-bit)"
        BNB_NF4 = "bitsandbytes-nf4", "bitsandbytes NF4"
        BNB_FP4 = "bitsandbytes-fp4", "bitsandbytes FP4"
        EETQ = "eetq", "EETQ (8-bit)"
        FP8 = "fp8", "FP8"
        AWQ = "awq", _("AWQ (pre-quantized)")
        GPTQ = "gptq", _("GPTQ (pre-quantized)")
        MARLIN = "marlin", _("Marlin (pre-quantized)")
        COMPRESSED_TENSORS = "compressed-tensors", _("compressed-tensors (pre-quantized)")

    class Device(models.TextChoices):
        GPU = "gpu", _("GPU")
        CPU = "cpu", _("CPU (no GPU; development and small models)")

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="specs")
    version = models.PositiveIntegerField()
    artifact = models.ForeignKey(ModelArtifact, verbose_name=_("model"), on_delete=models.PROTECT, related_name="+")
    backend = models.CharField(_("backend"), max_length=20, choices=Backend.choices, default=Backend.TGI)
    image = models.CharField(
        _("image"),
        max_length=255,
        blank=True,
        help_text=_("From the allowed images (docker runtime). Empty: the backend's default."),
    )
    quantize = models.CharField(_("quantization"), max_length=20, choices=Quantize.choices, blank=True)
    dtype = models.CharField(
        _("dtype"),
        max_length=10,
        blank=True,
        choices=[("", _("model default")), ("float16", "float16"), ("bfloat16", "bfloat16")],
    )
    kv_cache_dtype = models.CharField(
        _("KV cache dtype"),
        max_length=12,
        blank=True,
        choices=[("", _("model dtype")), ("fp8_e4m3fn", "fp8_e4m3fn"), ("fp8_e5m2", "fp8_e5m2")],
    )
    device = models.CharField(_("device"), max_length=4, choices=Device.choices, default=Device.GPU)
    num_shard = models.PositiveSmallIntegerField(
        _("GPUs (num_shard)"),
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(16)],
        help_text=_("Empty: the planner's smallest set."),
    )
    gpu_indexes = models.JSONField(
        _("chosen GPUs"), default=list, blank=True, help_text=_("Empty: placed automatically.")
    )
    max_input_tokens = models.PositiveIntegerField(_("max input tokens"), null=True, blank=True)
    max_total_tokens = models.PositiveIntegerField(_("max total tokens"), null=True, blank=True)
    max_batch_prefill_tokens = models.PositiveIntegerField(_("max batch prefill tokens"), null=True, blank=True)
    replicas = models.PositiveSmallIntegerField(
        _("replicas"),
        default=1,
        validators=[MinValueValidator(1), MaxValueValidator(8)],
        help_text=_("Servers of this spec, each placed on its own GPUs; the gateway balances between them."),
    )
    max_concurrent_requests = models.PositiveIntegerField(
        _("max concurrent requests"), default=128, validators=[MinValueValidator(1)]
    )
    cuda_memory_fraction = models.FloatField(
        _("CUDA memory fraction"), default=1.0, validators=[MinValueValidator(0.05), MaxValueValidator(1.0)]
    )
    # vLLM's own settings (deployments/backends/vllm): a backend refuses the fields of another.
    gpu_memory_utilization = models.FloatField(
        _("GPU memory utilization"),
        null=True,
        blank=True,
        validators=[MinValueValidator(0.05), MaxValueValidator(1.0)],
        help_text=_("The share of each GPU vLLM reserves at start (weights, activations, KV cache). Empty: 0.9."),
    )
    max_model_len = models.PositiveIntegerField(_("max model length"), null=True, blank=True)
    max_num_seqs = models.PositiveIntegerField(_("max sequences per batch"), null=True, blank=True)
    max_num_batched_tokens = models.PositiveIntegerField(_("max batched tokens"), null=True, blank=True)
    lora_adapters = models.JSONField(
        _("LoRA adapters"),
        default=list,
        blank=True,
        help_text=_('[{"name": "support", "path": "/models/adapters/support"}]'),
    )
    extra_env = models.JSONField(
        _("extra environment"), default=dict, blank=True, help_text=_("Allow-listed variable names only.")
    )
    credential = models.ForeignKey(
        "console.Credential",
        verbose_name=_("Hugging Face token"),
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    diff = models.JSONField(default=dict, blank=True)  # {field: [before, after]} against the previous version
    note = models.CharField(_("change note"), max_length=255, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["deployment", "-version"]
        default_permissions = ()
        constraints = [models.UniqueConstraint(fields=["deployment", "version"], name="spec_unique_version")]

    def __str__(self) -> str:
        return f"{self.deployment.name} v{self.version}"
