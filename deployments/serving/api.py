"""Deployments API: everything the deployment pages do. Reading needs `view` (or a grant on the
deployment); create, edit, launch, stop, restart, rollback and delete need `deploy`. On a production deployment,
launch, edit, rollback, stop, delete and leaving production answer 202 with the approval request they filed."""

from __future__ import annotations

from django.db.models import Prefetch
from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework.decorators import action
from rest_framework.response import Response

import audit
from audit.recorder import diff
from console import roles
from console.api.viewsets import ConsoleModelViewSet
from console.permissions import require
from deployments.models import AllowedImage, ApprovalRequest, Deployment, DeploymentReplica
from deployments.serving import services as lifecycle
from deployments.serving.approvals_api import ApprovalRequestSerializer, accepted
from deployments.serving.environment import deployment_configure
from deployments.serving.planning import verdict
from deployments.serving.serializers import (
    AllowedImageSerializer,
    ConfigureSerializer,
    DeploymentSerializer,
    DeploymentUpdateSerializer,
    PlanSerializer,
    RollbackSerializer,
    SpecSerializer,
)
from deployments.serving.specs import clean_spec, command_preview

DEPLOY_ACTIONS = {
    "create": roles.VIEW,  # then deployment_create checks deploy: the role, or a team scope for the owning team
    "update": roles.DEPLOY,
    "partial_update": roles.DEPLOY,
    "destroy": roles.DEPLOY,
    "launch": roles.DEPLOY,
    "stop": roles.DEPLOY,
    "restart": roles.DEPLOY,
    "rollback": roles.DEPLOY,
    "plan": roles.DEPLOY,
    "specs": roles.VIEW,
    "configure": roles.DEPLOY,
}


def _spec_input(data: dict) -> dict:
    values = dict(data)
    if "artifact" in values:
        values["artifact"] = values["artifact"].pk
    if values.get("credential") is not None:
        values["credential"] = values["credential"].pk
    return values


class DeploymentViewSet(ConsoleModelViewSet):
    """Deployments with their current spec. POST creates version 1 (and launches unless `launch` is false);
    PATCH makes a new spec version; the actions launch, stop, restart and rollback change what runs."""

    queryset = Deployment.objects.select_related("spec", "spec__created_by", "host", "team", "job")
    serializer_class = DeploymentSerializer
    action_permissions = DEPLOY_ACTIONS
    # plan checks `deploy` itself: globally, or on the deployment being edited when one is named.
    object_actions = {
        "retrieve",
        "update",
        "partial_update",
        "destroy",
        "launch",
        "stop",
        "restart",
        "rollback",
        "specs",
        "plan",
        "configure",
    }
    search_fields = ["name"]
    filterset_fields = ["state", "host__name", "team__name"]
    ordering_fields = ["name", "created_at", "state"]
    count_from_grants = True  # get_queryset below only prefetches

    def get_queryset(self):
        found = super().get_queryset()
        if self.action == "list":  # each row's replicas (state, actions): one query a page instead of two a row
            replicas = DeploymentReplica.objects.select_related("host")
            found = found.prefetch_related(Prefetch("replicas", queryset=replicas))
        return found

    def perform_create(self, serializer):
        data = dict(serializer.validated_data)
        serializer.instance = lifecycle.deployment_create(
            actor=self.request.user,
            name=data["name"],
            spec=_spec_input(data["spec_data"]),
            team=data.get("team"),
            restart_policy=data.get("restart_policy", Deployment.RestartPolicy.ON_FAILURE),
            launch=data["launch"],
            environment=data.get("environment", Deployment.Environment.DEVELOPMENT),
            prompt_retention=data.get("prompt_retention", Deployment.PromptRetention.NONE),
        )

    @extend_schema(request=DeploymentUpdateSerializer, responses={200: SpecSerializer, 202: ApprovalRequestSerializer})
    def partial_update(self, request, *args, **kwargs):
        deployment = self.get_object()
        serializer = DeploymentUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        spec = lifecycle.spec_update(
            actor=request.user,
            deployment=deployment,
            spec=_spec_input(serializer.validated_data["spec"]),
            note=serializer.validated_data.get("note", ""),
        )
        if isinstance(spec, ApprovalRequest):
            return accepted(spec)
        return Response(SpecSerializer(spec).data)

    @extend_schema(request=DeploymentUpdateSerializer, responses={200: SpecSerializer, 202: ApprovalRequestSerializer})
    def update(self, request, *args, **kwargs):
        return self.partial_update(request, *args, **kwargs)

    @extend_schema(responses={204: None, 202: ApprovalRequestSerializer})
    def destroy(self, request, *args, **kwargs):
        waiting = lifecycle.deployment_delete(actor=request.user, deployment=self.get_object())
        return accepted(waiting) if waiting else Response(status=204)

    def _state(self, deployment: Deployment, result=None) -> Response:
        if isinstance(result, ApprovalRequest):
            return accepted(result)
        deployment.refresh_from_db()
        return Response(DeploymentSerializer(deployment, context={"request": self.request}).data)

    @extend_schema(request=None, responses={200: DeploymentSerializer, 202: ApprovalRequestSerializer})
    @action(detail=True, methods=["post"])
    def launch(self, request, pk=None):
        deployment = self.get_object()
        result = lifecycle.deployment_launch(actor=request.user, deployment=deployment)
        return self._state(deployment, result)

    @extend_schema(request=None, responses={200: DeploymentSerializer, 202: ApprovalRequestSerializer})
    @action(detail=True, methods=["post"])
    def stop(self, request, pk=None):
        deployment = self.get_object()
        result = lifecycle.deployment_stop(actor=request.user, deployment=deployment)
        return self._state(deployment, result)

    @extend_schema(request=None, responses={200: DeploymentSerializer, 202: ApprovalRequestSerializer})
    @action(detail=True, methods=["post"])
    def restart(self, request, pk=None):
        deployment = self.get_object()
        result = lifecycle.deployment_restart(actor=request.user, deployment=deployment)
        return self._state(deployment, result)

    @extend_schema(request=RollbackSerializer, responses={200: SpecSerializer, 202: ApprovalRequestSerializer})
    @action(detail=True, methods=["post"])
    def rollback(self, request, pk=None):
        deployment = self.get_object()
        serializer = RollbackSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        spec = lifecycle.deployment_rollback(
            actor=request.user, deployment=deployment, version=serializer.validated_data["version"]
        )
        if isinstance(spec, ApprovalRequest):
            return accepted(spec)
        return Response(SpecSerializer(spec).data)

    @extend_schema(request=ConfigureSerializer, responses={200: DeploymentSerializer, 202: ApprovalRequestSerializer})
    @action(detail=True, methods=["post"])
    def configure(self, request, pk=None):
        """Set the environment and the prompt retention. Marking production is at once; leaving production waits
        for approval (202) while a retention change given with it applies at once."""
        deployment = self.get_object()
        serializer = ConfigureSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        result = deployment_configure(actor=request.user, deployment=deployment, **serializer.validated_data)
        return self._state(deployment, result)

    @extend_schema(responses=SpecSerializer(many=True))
    @action(detail=True, methods=["get"])
    def specs(self, request, pk=None):
        """Every version, newest first, each with its diff against the one before."""
        deployment = self.get_object()
        return Response(SpecSerializer(deployment.specs.select_related("created_by"), many=True).data)

    @extend_schema(request=PlanSerializer, responses=dict)
    @action(detail=False, methods=["post"])
    def plan(self, request):
        """The planner's verdict and the exact command line for a spec, without saving anything. With
        `deployment` (an edit), that deployment's own GPU reservations count as free."""
        raw = request.data.get("deployment") if hasattr(request.data, "get") else None
        target = None
        if raw not in (None, ""):
            target = Deployment.objects.filter(pk=int(raw) if str(raw).isdigit() else 0).first()
            if target is None:
                raise Http404
        require(request.user, roles.DEPLOY, target)
        serializer = PlanSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        values = clean_spec(_spec_input(serializer.validated_data["spec"]))
        plan = verdict(values, holder=target.holder if target else None)
        return Response(
            {
                "verdict": plan.as_dict(),
                "command": command_preview(values, plan, name=serializer.validated_data["name"]),
            }
        )


class AllowedImageViewSet(ConsoleModelViewSet):
    """Server images deployments may run (pinned by digest where known). Changes need `deploy`."""

    queryset = AllowedImage.objects.all()
    serializer_class = AllowedImageSerializer
    action_permissions = {
        "create": roles.DEPLOY,
        "update": roles.DEPLOY,
        "partial_update": roles.DEPLOY,
        "destroy": roles.DEPLOY,
    }
    search_fields = ["reference"]

    def perform_create(self, serializer):
        require(self.request.user, roles.DEPLOY)
        serializer.save()
        audit.record(
            action="image.allowed",
            actor=self.request.user,
            target=serializer.instance,
            detail={"digest": serializer.instance.digest},
        )

    def perform_update(self, serializer):
        before = AllowedImage.objects.get(pk=serializer.instance.pk)
        serializer.save()
        audit.record(
            action="image.changed",
            actor=self.request.user,
            target=serializer.instance,
            changes=diff(
                {"reference": before.reference, "digest": before.digest},
                {"reference": serializer.instance.reference, "digest": serializer.instance.digest},
            ),
        )

    def perform_destroy(self, instance):
        audit.record(action="image.removed", actor=self.request.user, target=instance)
        instance.delete()
