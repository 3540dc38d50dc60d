"""API for inference keys, service accounts and team quotas: the same services and rules as the pages. A key's
value appears once, in the create response; POST .../revoke/ revokes it."""

from __future__ import annotations

from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from console.api.parsers import REFUSAL, has_unstorable_text
from console.errors import ApplicationError
from console.permissions import ActionDenied, ObjectHidden, may_manage_service_accounts, may_open_inference_keys
from deployments.gateway import key_selectors, keys
from deployments.gateway import key_serializers as api_serializers
from deployments.gateway.models import InferenceKey, ServiceAccount
from deployments.serving.models import Deployment


class GatewayViewSet(viewsets.GenericViewSet):
    """Opened by a rule of console.permissions (`allowed`), not by one action; objects outside what the user
    manages are an audited 404."""

    model = InferenceKey
    denied = ""

    def allowed(self, user) -> bool:
        raise NotImplementedError

    def initial(self, request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)
        # Bodies are checked by the parsers (console.api.parsers); a query parameter reaches lookups directly.
        unstorable = [name for name, values in request.query_params.lists() if has_unstorable_text([name, *values])]
        if unstorable:
            raise ValidationError({name: [REFUSAL] for name in unstorable})
        if request.method != "OPTIONS" and not self.allowed(request.user):
            raise ActionDenied(request.user, self.denied)

    def get_object(self):
        try:
            return super().get_object()
        except Http404 as not_found:
            try:
                hidden = self.model._default_manager.filter(pk=self.kwargs.get("pk")).first()
            except (TypeError, ValueError, DjangoValidationError):
                raise not_found from None
            if hidden is not None:
                raise ObjectHidden(self.request.user, self.denied, hidden) from None
            raise


def _deployments(names: list[str]) -> list[Deployment]:
    """Deployments by name; an unknown name reads as one the owner may not use (no enumeration)."""
    found = {d.name: d for d in Deployment.objects.filter(name__in=names)}
    unknown = [name for name in names if name not in found]
    if unknown:
        raise ApplicationError(keys.not_usable_message(unknown), field="deployments")
    return [found[name] for name in names]


class InferenceKeyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, GatewayViewSet):
    """Inference keys for the gateway: yours, those of the service accounts you manage (all for user managers).
    Create one for yourself or for a service account (`service_account`); PATCH changes its name, scope, sources
    and limits; POST .../revoke/ revokes it. The value appears once, in the create response."""

    model = InferenceKey
    denied = "use inference keys"
    serializer_class = api_serializers.InferenceKeySerializer
    search_fields = ["name", "prefix", "user__username", "service_account__name"]
    ordering_fields = ["created_at", "expires_at", "name"]
    filterset_fields = ["all_deployments"]

    def allowed(self, user) -> bool:
        return may_open_inference_keys(user)

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return InferenceKey.objects.none()
        return key_selectors.key_list(user=self.request.user)

    @extend_schema(
        request=api_serializers.InferenceKeySerializer, responses={201: api_serializers.NewInferenceKeySerializer}
    )
    def create(self, request):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        key, raw = keys.key_create(
            actor=request.user,
            name=data["name"],
            days=data.get("days"),
            service_account=data.get("service_account"),
            team=data.get("team"),
            deployments=_deployments(data.get("deployments", [])),
            all_deployments=data.get("all_deployments", False),
            allowed_sources=data.get("allowed_sources", []),
            limits=serializer.limits(),
        )
        key.key = raw
        body = api_serializers.NewInferenceKeySerializer(key, context=self.get_serializer_context()).data
        return Response(body, status=status.HTTP_201_CREATED)

    def partial_update(self, request, pk=None):
        key = self.get_object()
        serializer = self.get_serializer(key, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        fixed = [name for name in ("days", "service_account") if name in data]
        if fixed:
            message = "Fixed when the key is made: make a new key to change it."
            raise serializers.ValidationError({name: [message] for name in fixed})
        changes = {"team": data["team"]} if "team" in data else {}
        key = keys.key_update(
            actor=request.user,
            key=key,
            name=data.get("name"),
            deployments=_deployments(data["deployments"]) if "deployments" in data else None,
            all_deployments=data.get("all_deployments"),
            allowed_sources=data.get("allowed_sources"),
            limits=serializer.limits() or None,
            **changes,
        )
        return Response(self.get_serializer(key).data)

    @extend_schema(request=None, responses=api_serializers.InferenceKeySerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        """Revoke the key: calls with it are refused from now on (revoking twice changes nothing)."""
        key = keys.key_revoke(actor=request.user, key=self.get_object())
        return Response(self.get_serializer(key).data)


class ServiceAccountViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, GatewayViewSet):
    """Applications owned by a team; their keys act with the team's grants. For user managers and for members of
    the owning team who hold deploy there. POST .../disable/ disables one and revokes its keys."""

    model = ServiceAccount
    denied = "manage service accounts"
    serializer_class = api_serializers.ServiceAccountSerializer
    search_fields = ["name", "team__name", "description"]
    ordering_fields = ["name", "created_at"]

    def allowed(self, user) -> bool:
        return may_manage_service_accounts(user)

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return ServiceAccount.objects.none()
        return key_selectors.service_account_list(user=self.request.user)

    def create(self, request):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        account = keys.service_account_create(
            actor=request.user, name=data["name"], team=data["team"], description=data.get("description", "")
        )
        return Response(self.get_serializer(account).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=api_serializers.ServiceAccountSerializer)
    @action(detail=True, methods=["post"])
    def disable(self, request, pk=None):
        """Disable the account and revoke its keys."""
        account = keys.service_account_disable(actor=request.user, account=self.get_object())
        return Response(self.get_serializer(account).data)


class TeamQuotaViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, GatewayViewSet):
    """Each team's limits, shared by every key that counts against it, by the team's id. PUT sets all three
    (left out: no limit); PATCH changes those it names. For those who manage the team's service accounts."""

    model = Group
    denied = "set team quotas"
    serializer_class = api_serializers.TeamQuotaSerializer
    search_fields = ["name"]
    ordering_fields = ["name"]

    def allowed(self, user) -> bool:
        return may_manage_service_accounts(user)

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return self.model.objects.none()
        teams = key_selectors.managed_teams(user=self.request.user)
        return teams.select_related("inference_quota", "inference_quota__updated_by")

    def _set(self, request, *, partial: bool):
        team = self.get_object()
        serializer = self.get_serializer(team, data=request.data, partial=partial)
        serializer.is_valid(raise_exception=True)
        limits = serializer.limits()
        if partial:
            current = self.get_serializer(team).data
            limits = {**{name: current[name] for name in keys.LIMIT_FIELDS}, **limits}
        keys.team_quota_set(actor=request.user, team=team, limits=limits)
        return Response(self.get_serializer(self.get_queryset().get(pk=team.pk)).data)

    def update(self, request, pk=None):
        return self._set(request, partial=False)

    def partial_update(self, request, pk=None):
        return self._set(request, partial=True)
