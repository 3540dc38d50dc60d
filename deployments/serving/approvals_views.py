"""Approval pages: the list (pending first, filters), a request with its spec diff and the planner's verdict, and
approving or rejecting it with a comment. Reading needs `view`; deciding needs deploy on the deployment and not
being the requester (deployments.serving.approvals decides; a requester's own decision is an audited 403)."""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import messages
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views import View
from django.views.generic import ListView

from console import roles
from console.errors import ApplicationError
from console.forms import apply_error
from console.mixins import ConsoleViewMixin
from console.permissions import report_denial
from deployments.models import ApprovalRequest, DeploymentSpec
from deployments.serving import approvals
from deployments.serving.approvals_forms import ApprovalFilterForm, DecisionForm
from deployments.serving.views import change_rows  # a spec diff as the deployment page shows it

STATE_CSS = {
    ApprovalRequest.State.PENDING: "text-bg-warning",
    ApprovalRequest.State.APPROVED: "text-bg-info",
    ApprovalRequest.State.APPLIED: "text-bg-success",
    ApprovalRequest.State.REJECTED: "text-bg-secondary",
    ApprovalRequest.State.EXPIRED: "text-bg-light border",
    ApprovalRequest.State.FAILED: "text-bg-danger",
}


def badge(request: ApprovalRequest) -> ApprovalRequest:
    request.state_css = STATE_CSS.get(request.state, "text-bg-secondary")
    return request


def diff_rows(request: ApprovalRequest) -> list[dict]:
    """The spec diff as the approver reads it: each changed field, now and as proposed (as the versions list
    shows it, a switch of backend included)."""
    spec = request.deployment.spec if request.deployment_id else None
    return change_rows(request.diff or {}, backend=spec.backend if spec else DeploymentSpec.Backend.TGI)


class ApprovalListView(ConsoleViewMixin, ListView):
    """Requests on the deployments the user may see, pending first; filter by state, action and deployment."""

    permission_action = roles.VIEW
    queryset = ApprovalRequest.objects.all()
    template_name = "serving/approvals/list.html"
    paginate_by = 25

    def get_queryset(self):
        self.filters = ApprovalFilterForm(self.request.GET or None)
        data = self.filters.cleaned_data if self.filters.is_valid() else {}
        return approvals.approval_list(
            user=self.request.user,
            state=data.get("state", ""),
            action=data.get("action", ""),
            deployment=data.get("deployment", ""),
        )

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        for request in context["object_list"]:
            badge(request)
            request.decidable = approvals.may_decide(self.request.user, request)
        query = {k: v for k, v in self.request.GET.items() if k in ApprovalFilterForm.base_fields and v}
        context.update(filters=self.filters, filter_query=urlencode(query), filtered=bool(query))
        return context


class ApprovalDetailView(ConsoleViewMixin, View):
    """One request: what was asked, the spec diff and the planner's verdict when asked, and the decision forms."""

    permission_action = roles.VIEW
    queryset = ApprovalRequest.objects.select_related("deployment", "requested_by", "decided_by")
    template_name = "serving/approvals/detail.html"

    def page(self, http_request, request: ApprovalRequest, *, forms=None, error: str = "", status: int = 200):
        """The page; `forms` ({"approve": form} or {"reject": form}) brings back a posted form with its errors."""
        forms = forms or {}
        return render(
            http_request,
            self.template_name,
            {
                "approval": badge(request),
                "diff_rows": diff_rows(request),
                "verdict": request.verdict or {},
                "may_decide": approvals.may_decide(http_request.user, request),
                "own": request.requested_by_id == http_request.user.pk,
                "approve_form": forms.get("approve") or DecisionForm(auto_id="approve-%s"),
                "reject_form": forms.get("reject") or DecisionForm(auto_id="reject-%s"),
                "error": error,
            },
            status=status,
        )

    def get(self, request, pk):
        return self.page(request, self.visible_object(pk))


class _DecisionView(ConsoleViewMixin, View):
    """POST only: approve or reject with the comment; the service checks who may."""

    permission_action = roles.VIEW
    queryset = ApprovalRequest.objects.select_related("deployment", "requested_by", "decided_by")
    verb = ""  # approve or reject: which form of the page this is

    def decide(self, actor, request: ApprovalRequest, comment: str) -> ApprovalRequest:
        raise NotImplementedError

    def post(self, http_request, pk):
        request = self.visible_object(pk)
        form = DecisionForm(http_request.POST, auto_id=f"{self.verb}-%s")
        again = ApprovalDetailView().page  # the page with this form and its errors
        if not form.is_valid():
            return again(http_request, request, forms={self.verb: form}, status=400)
        try:
            decided = self.decide(http_request.user, request, form.cleaned_data["comment"])
        except approvals.OwnRequest as denied:
            # Said on the page, not the generic 403 page, and audited like every denial.
            report_denial(denied, user=http_request.user, path=http_request.path, status=403)
            return again(http_request, request, forms={self.verb: form}, error=str(denied), status=403)
        except ApplicationError as error:
            if error.field != "comment":
                messages.error(http_request, error.message)
                return redirect("approval-detail", pk=request.pk)
            apply_error(form, error)
            return again(http_request, request, forms={self.verb: form}, status=400)
        self.say(http_request, decided)
        return redirect("approval-detail", pk=request.pk)

    def say(self, http_request, decided: ApprovalRequest) -> None:
        raise NotImplementedError


class ApprovalApproveView(_DecisionView):
    verb = "approve"

    def decide(self, actor, request, comment):
        return approvals.approve(actor=actor, request=request, comment=comment)

    def say(self, http_request, decided):
        if decided.state == ApprovalRequest.State.APPLIED:
            messages.success(http_request, _("Approved and applied: %(result)s") % {"result": decided.result})
        else:
            messages.error(
                http_request, _("Approved, but it could not be applied: %(result)s") % {"result": decided.result}
            )


class ApprovalRejectView(_DecisionView):
    verb = "reject"

    def decide(self, actor, request, comment):
        return approvals.reject(actor=actor, request=request, comment=comment)

    def say(self, http_request, decided):
        messages.success(http_request, _("Rejected: nothing was changed."))
