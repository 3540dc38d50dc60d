"""Quantize and evaluate pages: the jobs, the two forms, cancel. A job's own page is the job page (live log,
with the quality panel: options, the produced model, the figures)."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views import View

from console import roles
from console.errors import ApplicationError
from console.forms import apply_error
from console.mixins import ConsoleViewMixin
from console.permissions import can
from deployments.quality import selectors, services
from deployments.quality.forms import EvaluateForm, QuantizeForm

# The forms' names for the services' fields, where they differ.
QUANTIZE_FIELDS = {"calibration.samples": "samples", "calibration.seq_len": "seq_len"}
EVALUATE_FIELDS = {
    "perplexity.context_length": "context_length",
    "perplexity.stride": "stride",
    "task.kind": "task_kind",
    "task.prompt_field": "prompt_field",
    "task.expected_field": "expected_field",
    "task.choices_field": "choices_field",
    "task.limit": "limit",
    "perplexity.eval_split": "eval_split",
    "perplexity.eval_fraction": "eval_fraction",
    "perplexity.seed": "split_seed",
    "task.eval_split": "task_eval_split",
    "task.eval_fraction": "task_eval_split",
    "task.seed": "task_eval_split",
}


def _apply(form, error: ApplicationError, names: dict[str, str]) -> None:
    if error.field and error.field not in form.fields:
        error = ApplicationError(error.message, field=names.get(error.field))
    apply_error(form, error)


class QualityListView(ConsoleViewMixin, View):
    permission_action = roles.FINETUNE

    def get(self, request):
        context = {"jobs": selectors.quality_jobs(user=request.user), "can_start": can(request.user, roles.FINETUNE)}
        return render(request, "quality/list.html", context)


class QuantizeCreateView(ConsoleViewMixin, View):
    permission_action = roles.FINETUNE

    def get(self, request):
        initial = {"source": int(request.GET["source"])} if request.GET.get("source", "").isdigit() else {}
        return render(request, "quality/quantize_form.html", {"form": QuantizeForm(user=request.user, initial=initial)})

    def post(self, request):
        form = QuantizeForm(request.POST, user=request.user)
        if form.is_valid():
            try:
                job = services.quantize_start(
                    actor=request.user,
                    source=form.cleaned_data["source"],
                    options=form.options(),
                    calibration=form.cleaned_data.get("calibration_version"),
                )
            except ApplicationError as error:
                _apply(form, error, QUANTIZE_FIELDS)
            else:
                messages.success(request, _("Quantization started."))
                return redirect("job-detail", pk=job.pk)
        return render(request, "quality/quantize_form.html", {"form": form}, status=400)


class EvaluateCreateView(ConsoleViewMixin, View):
    permission_action = roles.FINETUNE

    def get(self, request):
        wanted = [int(pk) for pk in request.GET.getlist("artifacts") if pk.isdigit()]
        form = EvaluateForm(user=request.user, initial={"artifacts": wanted} if wanted else {})
        return render(request, "quality/evaluate_form.html", {"form": form})

    def post(self, request):
        form = EvaluateForm(request.POST, user=request.user)
        if form.is_valid():
            try:
                job = services.evaluate_start(
                    actor=request.user,
                    artifacts=list(form.cleaned_data["artifacts"]),
                    perplexity=form.perplexity_options(),
                    perplexity_version=form.cleaned_data.get("perplexity_version"),
                    task=form.task_options(),
                    task_version=form.cleaned_data.get("task_version"),
                )
            except ApplicationError as error:
                _apply(form, error, EVALUATE_FIELDS)
            else:
                messages.success(request, _("Evaluation started."))
                return redirect("job-detail", pk=job.pk)
        return render(request, "quality/evaluate_form.html", {"form": form}, status=400)


class QualityCancelView(ConsoleViewMixin, View):
    permission_action = roles.FINETUNE

    def post(self, request, pk):
        job = selectors.quality_job(request.user, pk)
        try:
            services.quality_cancel(actor=request.user, job=job)
        except ApplicationError as error:
            messages.error(request, error.message)
        else:
            messages.success(request, _("Stopping the job."))
        return redirect("job-detail", pk=job.pk)
