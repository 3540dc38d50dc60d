"""Accounts API: me, users and roles, teams, grants, tokens, credentials."""

from __future__ import annotations

from django.contrib.auth import get_user_model, update_session_auth_hash
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from console import roles
from console.accounts import selectors
from console.accounts import serializers as api_serializers
from console.accounts.models import ApiToken, Credential
from console.accounts.services import access, credentials, passwords, teams, tokens
from console.api.viewsets import ConsoleModelViewSet
from console.permissions import require

User = get_user_model()


class MeView(APIView):
    """Who am I: username, roles and the actions they allow."""

    @extend_schema(responses=api_serializers.MeSerializer)
    def get(self, request):
        return Response(api_serializers.MeSerializer(request.user).data)


class PasswordChangeView(APIView):
    """Change your own password: the current one and the new one (AUTH_PASSWORD_VALIDATORS apply). Audited,
    without either password. The one call left to a person who must change an admin's temporary password."""

    @extend_schema(request=api_serializers.PasswordChangeSerializer, responses={204: None})
    def post(self, request):
        serializer = api_serializers.PasswordChangeSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        passwords.password_change(
            actor=request.user,
            current_password=serializer.validated_data["current_password"],
            new_password=serializer.validated_data["new_password"],
        )
        if request.auth is None:  # a session: keep it signed in
            update_session_auth_hash(request._request, request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class UserViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    viewsets.GenericViewSet,
):
    """People who can log in, with their roles. Needs manage_users."""

    serializer_class = api_serializers.UserSerializer
    search_fields = ["username", "email"]
    ordering_fields = ["username", "date_joined", "last_login"]
    filterset_fields = ["is_active"]

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        require(request.user, roles.MANAGE_USERS)  # before any input is validated

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return User.objects.none()
        return selectors.user_list(user=self.request.user)

    def perform_create(self, serializer):
        data = serializer.validated_data
        if not data.get("password"):
            raise serializers.ValidationError({"password": ["A first password is required."]})
        serializer.instance = access.user_create(
            actor=self.request.user,
            username=data["username"],
            password=data["password"],
            email=data.get("email", ""),
            role_names=data.get("roles", []),
        )

    @extend_schema(request=api_serializers.PasswordResetSerializer, responses={204: None})
    @action(detail=True, methods=["post"], url_path="password")
    def password(self, request, pk=None):
        """Set a temporary password the person must change at the next login. Needs manage_users."""
        person = self.get_object()
        serializer = api_serializers.PasswordResetSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        passwords.password_reset(
            actor=request.user,
            user=person,
            new_password=serializer.validated_data["password"],
            revoke_tokens=serializer.validated_data["revoke_tokens"],
        )
        return Response(status=status.HTTP_204_NO_CONTENT)

    def perform_update(self, serializer):
        data = serializer.validated_data
        if data.get("password"):
            raise serializers.ValidationError(
                {"password": ["Passwords are changed by their owner, or reset with POST .../password/."]}
            )
        serializer.instance = access.user_update(
            actor=self.request.user,
            user=serializer.instance,
            email=data.get("email"),
            is_active=data.get("is_active"),
            role_names=data.get("roles"),
        )


class GrantViewSet(viewsets.ViewSet):
    """Per-object grants to users and teams. Needs manage_users."""

    serializer_class = api_serializers.GrantSerializer

    @extend_schema(responses=api_serializers.GrantRowSerializer(many=True))
    def list(self, request):
        rows = selectors.grant_list(user=request.user)
        return Response(api_serializers.GrantRowSerializer(rows, many=True).data)

    def _apply(self, request, service):
        require(request.user, roles.MANAGE_USERS)
        serializer = api_serializers.GrantSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        target = access.grant_target(
            target_type=data["target_type"], target_id=data.get("target_id"), target_name=data.get("target_name")
        )
        service(actor=request.user, grantee=data.get("user") or data.get("team"), action=data["action"], target=target)
        return {**serializer.data, "target_id": str(target.pk), "target_name": str(target)}

    def create(self, request):
        return Response(self._apply(request, access.object_grant), status=status.HTTP_201_CREATED)

    @extend_schema(
        parameters=[
            OpenApiParameter("target_type", description="app_label.model, one of the grantable kinds", required=True),
            OpenApiParameter("search", description="part of the name"),
        ],
        responses=api_serializers.GrantTargetSerializer(many=True),
    )
    @action(detail=False, methods=["get"], url_path="targets", url_name="targets")
    def targets(self, request):
        """Objects a grant can name, by name: what the grant form's searchable list offers (at most 20)."""
        found = access.grant_target_search(
            actor=request.user,
            target_type=request.query_params.get("target_type", ""),
            query=request.query_params.get("search", "").strip(),
        )
        return Response(api_serializers.GrantTargetSerializer(found, many=True).data)

    @extend_schema(request=api_serializers.GrantSerializer, responses={204: None})
    @action(detail=False, methods=["post"])
    def revoke(self, request):
        self._apply(request, access.object_revoke)
        return Response(status=status.HTTP_204_NO_CONTENT)


class TeamViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Teams: they own deployments and credentials and receive grants. Needs manage_users. PUT/PATCH renames;
    DELETE refuses (400) while the team owns anything. Members are listed, added and removed under .../members/."""

    serializer_class = api_serializers.TeamSerializer
    search_fields = ["name"]
    ordering_fields = ["name"]

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        require(request.user, roles.MANAGE_USERS)  # before any input is validated

    def get_queryset(self):
        return selectors.team_list()  # role groups are not teams: a role's id is a 404 here

    def perform_create(self, serializer):
        serializer.instance = teams.team_create(actor=self.request.user, name=serializer.validated_data["name"])

    def perform_update(self, serializer):
        name = serializer.validated_data.get("name", serializer.instance.name)
        serializer.instance = teams.team_rename(actor=self.request.user, team=serializer.instance, name=name)

    def perform_destroy(self, instance):
        teams.team_delete(actor=self.request.user, team=instance)

    @extend_schema(
        methods=["GET"], request=None, responses=api_serializers.TeamSerializer, summary="The team's members"
    )
    @extend_schema(
        methods=["POST"],
        request=api_serializers.TeamMemberSerializer,
        responses=api_serializers.TeamSerializer,
        summary="Add a member",
    )
    @action(detail=True, methods=["get", "post"], url_path="members")
    def members(self, request, pk=None):
        team = self.get_object()
        if request.method == "POST":
            serializer = api_serializers.TeamMemberSerializer(data=request.data)
            serializer.is_valid(raise_exception=True)
            teams.team_member_add(actor=request.user, team=team, user=serializer.validated_data["username"])
        return Response(api_serializers.TeamSerializer(team).data)

    @extend_schema(
        request=None,
        responses={204: None},
        summary="Remove a member",
        parameters=[OpenApiParameter("username", str, OpenApiParameter.PATH, description="The member's username.")],
    )
    @action(detail=True, methods=["delete"], url_path=r"members/(?P<username>[^/]+)")
    def member_remove(self, request, pk=None, username=None):
        team = self.get_object()
        person = get_object_or_404(selectors.team_members(team=team), username=username)
        teams.team_member_remove(actor=request.user, team=team, user=person)
        return Response(status=status.HTTP_204_NO_CONTENT)


class TokenViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Personal API tokens. The value appears once, in the create response; DELETE revokes."""

    serializer_class = api_serializers.TokenSerializer
    filterset_fields = ["user__username"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return ApiToken.objects.none()
        return selectors.token_list(user=self.request.user)

    def get_serializer_class(self):
        return api_serializers.NewTokenSerializer if self.action == "create" else api_serializers.TokenSerializer

    def perform_create(self, serializer):
        token, raw = tokens.token_create(
            actor=self.request.user,
            user=self.request.user,
            name=serializer.validated_data["name"],
            expires_at=serializer.validated_data.get("expires_at"),
            scope=serializer.validated_data.get("scope", ApiToken.Scope.WRITE),
        )
        token.token = raw
        serializer.instance = token

    def perform_destroy(self, instance):
        tokens.token_revoke(actor=self.request.user, token=instance)


class CredentialViewSet(ConsoleModelViewSet):
    """Stored secrets (Hugging Face tokens...). Values are write-only."""

    queryset = Credential.objects.select_related("team")
    serializer_class = api_serializers.CredentialSerializer
    action_permissions = {
        "create": roles.ADD_MODEL,
        "update": roles.ADD_MODEL,
        "partial_update": roles.ADD_MODEL,
        "destroy": roles.ADD_MODEL,
        "rotate_key": roles.MANAGE_USERS,
    }
    search_fields = ["name", "description"]
    filterset_fields = ["kind"]

    def perform_create(self, serializer):
        data = serializer.validated_data
        serializer.instance = credentials.credential_create(
            actor=self.request.user,
            name=data["name"],
            value=data["value"],
            kind=data.get("kind", "hf_token"),
            description=data.get("description", ""),
            team=data.get("team"),
        )

    def perform_update(self, serializer):
        data = serializer.validated_data
        serializer.instance = credentials.credential_update(
            actor=self.request.user,
            credential=serializer.instance,
            value=data.get("value"),
            description=data.get("description"),
            name=data.get("name"),
        )

    def perform_destroy(self, instance):
        credentials.credential_delete(actor=self.request.user, credential=instance)

    @extend_schema(request=None, responses={202: None})
    @action(detail=False, methods=["post"], url_path="rotate-key")
    def rotate_key(self, request):
        """Re-encrypt every stored secret under the newest key, in a worker. Needs manage_users."""
        credentials.secrets_rotate_enqueue(actor=request.user)
        return Response({"detail": "Re-encryption queued."}, status=status.HTTP_202_ACCEPTED)
