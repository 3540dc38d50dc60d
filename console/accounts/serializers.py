"""Serializers of the console endpoints. Secrets are write-only; responses carry a mask."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from rest_framework import serializers

from console import roles
from console.accounts.models import ApiToken, Credential
from console.accounts.selectors import password_change_required
from console.fields import MASK
from console.permissions import allowed_actions, user_roles

User = get_user_model()


class MeSerializer(serializers.Serializer):
    username = serializers.CharField()
    roles = serializers.ListField(child=serializers.CharField())
    actions = serializers.ListField(child=serializers.CharField())
    must_change_password = serializers.BooleanField()

    def to_representation(self, user):
        return {
            "username": user.username,
            "roles": user_roles(user),
            "actions": allowed_actions(user),
            "must_change_password": password_change_required(user),
        }


class PasswordChangeSerializer(serializers.Serializer):
    current_password = serializers.CharField(write_only=True, trim_whitespace=False, style={"input_type": "password"})
    new_password = serializers.CharField(write_only=True, trim_whitespace=False, style={"input_type": "password"})


class PasswordResetSerializer(serializers.Serializer):
    password = serializers.CharField(
        write_only=True,
        trim_whitespace=False,
        style={"input_type": "password"},
        help_text="A temporary password; its holder must change it at the next login.",
    )
    revoke_tokens = serializers.BooleanField(default=False, help_text="Also revoke the person's API tokens.")


class UserSerializer(serializers.ModelSerializer):
    roles = serializers.ListField(child=serializers.ChoiceField(choices=list(roles.ROLES)), required=False)
    password = serializers.CharField(write_only=True, required=False, style={"input_type": "password"})

    class Meta:
        model = User
        fields = ["id", "username", "email", "is_active", "roles", "password", "last_login", "date_joined"]
        read_only_fields = ["id", "last_login", "date_joined"]

    def to_representation(self, instance):
        data = super().to_representation(instance)
        data["roles"] = user_roles(instance)
        return data


class TokenSerializer(serializers.ModelSerializer):
    user = serializers.SlugRelatedField(slug_field="username", read_only=True)
    is_active = serializers.BooleanField(read_only=True)

    class Meta:
        model = ApiToken
        fields = [
            "id",
            "name",
            "prefix",
            "user",
            "scope",
            "created_at",
            "expires_at",
            "last_used_at",
            "revoked_at",
            "is_active",
        ]
        read_only_fields = ["prefix", "created_at", "last_used_at", "revoked_at"]


class NewTokenSerializer(TokenSerializer):
    token = serializers.CharField(read_only=True, help_text="The token value. Shown only in this response.")

    class Meta(TokenSerializer.Meta):
        fields = [*TokenSerializer.Meta.fields, "token"]


class CredentialSerializer(serializers.ModelSerializer):
    value = serializers.CharField(
        write_only=True,
        trim_whitespace=True,
        style={"input_type": "password"},
        help_text="Write-only. Responses show a mask.",
    )
    value_set = serializers.SerializerMethodField(help_text="A mask: the value is never returned.")
    team = serializers.SlugRelatedField(
        slug_field="name", queryset=Group.objects.exclude(name__in=list(roles.ROLES)), required=False, allow_null=True
    )

    class Meta:
        model = Credential
        fields = ["id", "name", "kind", "description", "team", "value", "value_set", "created_at", "updated_at"]
        read_only_fields = ["created_at", "updated_at"]

    def get_value_set(self, obj) -> str:
        return MASK

    def get_fields(self):
        fields = super().get_fields()
        if self.instance is not None:
            fields["value"].required = False
        return fields


class GrantSerializer(serializers.Serializer):
    user = serializers.SlugRelatedField(
        slug_field="username", queryset=User.objects.all(), required=False, allow_null=True
    )
    team = serializers.SlugRelatedField(
        slug_field="name", queryset=Group.objects.exclude(name__in=list(roles.ROLES)), required=False, allow_null=True
    )
    action = serializers.ChoiceField(choices=list(roles.ACTIONS))
    target_type = serializers.ChoiceField(
        choices=list(roles.GRANTABLE),
        help_text="app_label.model. deployments.host and auth.group are the team scopes of deploy: on a host, the "
        "grantee team's members create and launch its deployments there; on a team (granted to that team), they run "
        "every deployment it owns.",
    )
    target_id = serializers.CharField(required=False, help_text="The object's id; or give target_name.")
    target_name = serializers.CharField(required=False, max_length=200, help_text="The object's name (unique).")

    def validate(self, attrs):
        if bool(attrs.get("user")) == bool(attrs.get("team")):
            raise serializers.ValidationError({"user": ["Give either a user or a team."]})
        if not attrs.get("target_id") and not attrs.get("target_name"):
            raise serializers.ValidationError({"target_name": ["Give the object's name (or its id as target_id)."]})
        return attrs


class GrantTargetSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()


class GrantRowSerializer(serializers.Serializer):
    """A grant as listed: the grantee by name (what grant_list returns), not a related object."""

    user = serializers.CharField(allow_null=True)
    team = serializers.CharField(allow_null=True)
    action = serializers.CharField()
    target_type = serializers.CharField()
    target_label = serializers.CharField(help_text="What kind of object, in words.")
    target_id = serializers.CharField()
    target_name = serializers.CharField()


class RolesSerializer(serializers.Serializer):
    roles = serializers.ListField(child=serializers.ChoiceField(choices=list(roles.ROLES)), allow_empty=True)


class TeamSerializer(serializers.ModelSerializer):
    """A team: its name (unique, never a role's) and its members' usernames (changed through .../members/)."""

    members = serializers.SerializerMethodField(help_text="Usernames of the members, sorted.")

    class Meta:
        model = Group
        fields = ["id", "name", "members"]
        read_only_fields = ["id"]
        extra_kwargs = {"name": {"validators": []}}  # the service checks names (case aside, roles excluded)

    def get_members(self, team) -> list[str]:
        return sorted(team.user_set.values_list("username", flat=True))


class TeamMemberSerializer(serializers.Serializer):
    username = serializers.SlugRelatedField(
        slug_field="username", queryset=User.objects.filter(is_active=True), help_text="An active user's username."
    )
