"""Approvals API: list and read requests (`view`), approve or reject one with a comment (deploy on its deployment,
and not the requester: a requester's own decision is an audited 403). The deployments API answers 202 with the
request when a production deployment's change waits for approval."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.response import Response

from console import roles
from console.api.viewsets import ConsoleReadOnlyViewSet
from deployments.models import ApprovalRequest
from deployments.serving import approvals


class ApprovalRequestSerializer(serializers.ModelSerializer):
    requested_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    decided_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    deployment = serializers.PrimaryKeyRelatedField(read_only=True, help_text="Null once an approved delete ran.")
    verdict = serializers.JSONField(read_only=True, help_text="The planner's verdict when the change was asked for.")
    diff = serializers.JSONField(read_only=True, help_text="{field: [current, proposed]} of the spec.")
    proposal = serializers.JSONField(read_only=True)

    class Meta:
        model = ApprovalRequest
        fields = [
            "id",
            "deployment",
            "deployment_name",
            "action",
            "proposal",
            "base_version",
            "diff",
            "verdict",
            "state",
            "requested_by",
            "requested_at",
            "expires_at",
            "decided_by",
            "decided_at",
            "comment",
            "result",
        ]
        read_only_fields = fields


class DecisionSerializer(serializers.Serializer):
    comment = serializers.CharField(required=False, allow_blank=True, max_length=2000, default="")


def accepted(request: ApprovalRequest) -> Response:
    """202: the change was not made; it waits as this request."""
    return Response(ApprovalRequestSerializer(request).data, status=status.HTTP_202_ACCEPTED)


class ApprovalRequestViewSet(ConsoleReadOnlyViewSet):
    """Approval requests of production deployments, pending first. `approve` applies the change with the approver's
    authority (the answer says whether it applied or failed, and why); `reject` changes nothing."""

    queryset = ApprovalRequest.objects.select_related("requested_by", "decided_by", "deployment")
    serializer_class = ApprovalRequestSerializer
    # Deciding is checked by the service: deploy on the request's deployment, and another user than the requester.
    action_permissions = {"approve": roles.VIEW, "reject": roles.VIEW}
    object_actions = {"retrieve", "approve", "reject"}
    filterset_fields = ["state", "action", "deployment"]
    search_fields = ["deployment_name"]
    ordering_fields = ["requested_at", "expires_at", "state"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return ApprovalRequest.objects.none()
        return approvals.approval_list(user=self.request.user)

    def _decide(self, request, decide) -> Response:
        """Approve or reject (`decide`: the service) the request in the URL with the posted comment."""
        serializer = DecisionSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        decided = decide(actor=request.user, request=self.get_object(), comment=serializer.validated_data["comment"])
        return Response(ApprovalRequestSerializer(decided).data)

    @extend_schema(request=DecisionSerializer, responses=ApprovalRequestSerializer)
    @action(detail=True, methods=["post"])
    def approve(self, request, pk=None):
        return self._decide(request, approvals.approve)

    @extend_schema(request=DecisionSerializer, responses=ApprovalRequestSerializer)
    @action(detail=True, methods=["post"])
    def reject(self, request, pk=None):
        return self._decide(request, approvals.reject)
