"""A benchmark run against a deployment (the workload, the spec it ran at, its job) and its steps, one row per
sweep level with every figure as its own column, so runs can be compared and exported without parsing a blob."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

from console.fields import EncryptedSecretField
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


# The step figures the load generator reports (workers/jobs/bench_figures.step_figures), one column each.
FLOAT_FIGURES = (
    "ttft_ms_p50", "ttft_ms_p90", "ttft_ms_p99", "ttft_ms_mean", "itl_ms_p50", "itl_ms_p99", "itl_ms_mean",
    "e2e_ms_p50", "e2e_ms_p99", "output_tokens_per_s", "total_tokens_per_s", "requests_per_s", "window_s",
    "prompt_tokens_mean", "output_tokens_mean", "schedule_lag_ms_p99",
)  # fmt: skip
INT_FIGURES = ("requests", "requests_ok", "requests_failed", "warmup_requests", "token_count_mismatches")
SERVER_FIGURES = ("queue_size", "batch_size", "batch_tokens")


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
    extra = models.JSONField(default=dict, blank=True)  # the generator's other figures (stamps, warm-up errors...)
    recorded_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["run", "index"]
        default_permissions = ()
        constraints = [models.UniqueConstraint(fields=["run", "index"], name="benchmark_step_once")]

    def __str__(self) -> str:
        return f"step {self.index} of benchmark {self.run_id}"
