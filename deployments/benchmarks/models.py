"""A benchmark run against a deployment (the workload, the spec it ran at, its job) and its steps, one row per
sweep level with every figure as its own column, so runs can be compared and exported without parsing a blob."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

from console.fields import EncryptedSecretField
from deployments.benchmarks import texts
from deployments.jobs.models import Job


class BenchmarkRun(models.Model):
    State = Job.Status  # a run's state is its job's lifecycle (the same values and words)

    deployment = models.ForeignKey("deployments.Deployment", on_delete=models.CASCADE, related_name="benchmarks")
    # The spec the deployment ran when the benchmark started: what the figures are figures of.
    spec = models.ForeignKey("deployments.DeploymentSpec", on_delete=models.SET_NULL, null=True, related_name="+")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    workload = models.JSONField(_("workload"), default=dict)
    state = models.CharField(_("state"), max_length=10, choices=State.choices, default=State.PENDING)
    job = models.ForeignKey("deployments.Job", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    # The inference key the job calls with (the starter's, scoped to this deployment, revoked when the job ends)
    # and its raw value, encrypted at rest and cleared at the end: the agent reads it from here, never a message.
    inference_key = models.ForeignKey(
        "deployments.InferenceKey", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    api_key = EncryptedSecretField(null=True, blank=True, editable=False)
    failure_cause = models.CharField(_("failure cause"), max_length=60, blank=True)
    failure_detail = models.TextField(_("failure detail"), blank=True)
    note = models.CharField(_("note"), max_length=500, blank=True)
    # The tuning loop: a re-run of `baseline`'s workload after `suggestion` (rule, title, change) was applied. It
    # waits (pending, no job) until the deployment runs a spec version of at least `after_version`; where the
    # change needs an approval, `approval` is the request and the version is known once it is applied.
    baseline = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="reruns", verbose_name=_("baseline")
    )
    suggestion = models.JSONField(_("suggestion applied"), default=dict, blank=True)
    after_version = models.PositiveIntegerField(null=True, blank=True)
    approval = models.ForeignKey(
        "deployments.ApprovalRequest", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    schedule = models.ForeignKey(
        "BenchmarkSchedule", on_delete=models.SET_NULL, null=True, blank=True, related_name="runs"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        default_permissions = ()

    def __str__(self) -> str:
        return f"benchmark {self.pk} of {self.deployment_id}"

    @property
    def is_active(self) -> bool:
        return self.state in self.State.active()

    # The stored sentences (English) in the reader's language; a user's own note shows as written.
    @property
    def note_display(self) -> str:
        return texts.run_note_display(self.note)

    @property
    def failure_detail_display(self) -> str:
        return texts.rerun_failure_display(self.failure_detail)

    @property
    def suggestion_display(self) -> dict:
        """The applied suggestion with its title in the reader's language (why and effect stay as stored)."""
        if not self.suggestion:
            return self.suggestion
        return {**self.suggestion, "title": texts.suggestion_title_display(self.suggestion.get("title", ""))}


# The step figures the load generator reports (workers/jobs/bench_figures.step_figures), one column each.
FLOAT_FIGURES = (
    "ttft_ms_p50", "ttft_ms_p90", "ttft_ms_p99", "ttft_ms_mean", "itl_ms_p50", "itl_ms_p99", "itl_ms_mean",
    "e2e_ms_p50", "e2e_ms_p99", "output_tokens_per_s", "total_tokens_per_s", "requests_per_s", "window_s",
    "prompt_tokens_mean", "output_tokens_mean", "schedule_lag_ms_p99",
)  # fmt: skip
INT_FIGURES = ("requests", "requests_ok", "requests_failed", "warmup_requests", "token_count_mismatches")
# The server's own, from its /metrics sampled during the step (workers/jobs/loadgen_metrics.py): the means of the
# queue and batch gauges, their peaks, the KV cache's fill (0..1, vLLM reports it), and the step's mean queue time,
# prefill time and time per output token from the server's histograms (the cross-check of the client's figures).
SERVER_FIGURES = (
    "queue_size", "batch_size", "batch_tokens", "queue_size_max", "batch_size_max", "kv_cache_usage_max",
    "server_queue_ms_mean", "server_prefill_ms_mean", "server_itl_ms_mean",
)  # fmt: skip


class BenchmarkStep(models.Model):
    run = models.ForeignKey(BenchmarkRun, on_delete=models.CASCADE, related_name="steps")
    index = models.PositiveIntegerField(_("step"))
    label = models.CharField(_("label"), max_length=100, blank=True)
    concurrency = models.PositiveIntegerField(_("concurrency"), null=True, blank=True)
    rate = models.FloatField(_("rate (requests/s)"), null=True, blank=True)
    ttft_ms_p50 = models.FloatField(null=True, blank=True)
    ttft_ms_p90 = models.FloatField(null=True, blank=True)
    ttft_ms_p99 = models.FloatField(null=True, blank=True)
    ttft_ms_mean = models.FloatField(null=True, blank=True)
    itl_ms_p50 = models.FloatField(null=True, blank=True)
    itl_ms_p99 = models.FloatField(null=True, blank=True)
    itl_ms_mean = models.FloatField(null=True, blank=True)
    e2e_ms_p50 = models.FloatField(null=True, blank=True)
    e2e_ms_p99 = models.FloatField(null=True, blank=True)
    output_tokens_per_s = models.FloatField(null=True, blank=True)
    total_tokens_per_s = models.FloatField(null=True, blank=True)
    requests_per_s = models.FloatField(null=True, blank=True)
    window_s = models.FloatField(null=True, blank=True)
    prompt_tokens_mean = models.FloatField(null=True, blank=True)
    output_tokens_mean = models.FloatField(null=True, blank=True)
    schedule_lag_ms_p99 = models.FloatField(null=True, blank=True)
    requests = models.PositiveIntegerField(default=0)
    requests_ok = models.PositiveIntegerField(default=0)
    requests_failed = models.PositiveIntegerField(default=0)
    warmup_requests = models.PositiveIntegerField(default=0)
    token_count_mismatches = models.PositiveIntegerField(default=0)
    errors = models.JSONField(default=dict, blank=True)  # {error type: count}
    has_errors = models.BooleanField(default=False)
    # The server's own /metrics during the step (queueing vs compute); empty where it was not scraped.
    queue_size = models.FloatField(null=True, blank=True)
    batch_size = models.FloatField(null=True, blank=True)
    batch_tokens = models.FloatField(null=True, blank=True)
    queue_size_max = models.FloatField(null=True, blank=True)
    batch_size_max = models.FloatField(null=True, blank=True)
    kv_cache_usage_max = models.FloatField(null=True, blank=True)
    server_queue_ms_mean = models.FloatField(null=True, blank=True)
    server_prefill_ms_mean = models.FloatField(null=True, blank=True)
    server_itl_ms_mean = models.FloatField(null=True, blank=True)
    extra = models.JSONField(default=dict, blank=True)  # the generator's other figures (stamps, warm-up errors...)
    recorded_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["run", "index"]
        default_permissions = ()
        constraints = [models.UniqueConstraint(fields=["run", "index"], name="benchmark_step_once")]

    def __str__(self) -> str:
        return f"step {self.index} of benchmark {self.run_id}"


class BenchmarkSchedule(models.Model):
    """A benchmark that repeats (e.g. nightly): the same workload against the deployment every `interval_hours`,
    started as `created_by` (who must still hold use_deployment). A run whose heaviest step falls more than
    `drop_percent` below the median of the schedule's earlier runs raises a BenchmarkAlert."""

    deployment = models.ForeignKey("deployments.Deployment", on_delete=models.CASCADE, related_name="bench_schedules")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    workload = models.JSONField(_("workload"), default=dict)
    note = models.CharField(_("note"), max_length=500, blank=True)
    interval_hours = models.PositiveIntegerField(_("every (hours)"), default=24)
    next_run_at = models.DateTimeField(_("next run"))
    drop_percent = models.FloatField(_("alert on a drop of (%)"), default=10.0)
    enabled = models.BooleanField(_("enabled"), default=True)
    last_error = models.CharField(_("last error"), max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["deployment", "pk"]
        default_permissions = ()

    def __str__(self) -> str:
        return f"benchmark schedule {self.pk} of {self.deployment_id}"

    @property
    def last_error_display(self) -> str:
        return texts.schedule_error_display(self.last_error)


class BenchmarkAlert(models.Model):
    """A scheduled run's figure that dropped beyond its schedule's threshold against the earlier runs' median."""

    deployment = models.ForeignKey("deployments.Deployment", on_delete=models.CASCADE, related_name="bench_alerts")
    schedule = models.ForeignKey(BenchmarkSchedule, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    run = models.ForeignKey(BenchmarkRun, on_delete=models.CASCADE, related_name="alerts")
    figure = models.CharField(_("figure"), max_length=40)
    value = models.FloatField(_("value"))
    baseline = models.FloatField(_("baseline"))
    change_percent = models.FloatField(_("change (%)"))
    created_at = models.DateTimeField(auto_now_add=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta:
        ordering = ["-created_at", "-id"]
        default_permissions = ()

    def __str__(self) -> str:
        return f"benchmark alert {self.pk} of {self.deployment_id}"
