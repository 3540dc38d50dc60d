"""API shapes of inference keys, service accounts and team quotas. Deployments and teams are named by name; the
limits are rpm, tpm and tpd (null: no limit). A key's value appears once, in the create response."""

from __future__ import annotations

from rest_framework import serializers

from console.accounts.selectors import team_list
from deployments.gateway import key_selectors
from deployments.gateway.keys import LIMIT_FIELDS, MAX_SOURCES
from deployments.gateway.models import InferenceKey, ServiceAccount, TeamQuota


def limit_field(name: str, help_text: str) -> serializers.IntegerField:
    return serializers.IntegerField(
        source=LIMIT_FIELDS[name][0],
        required=False,
        allow_null=True,
        min_value=1,
        max_value=LIMIT_FIELDS[name][1],
        help_text=f"{help_text}; null: no limit.",
    )


class LimitsSerializer(serializers.Serializer):
    rpm = limit_field("rpm", "Requests per minute")
    tpm = limit_field("tpm", "Tokens (prompt and completion) per minute")
    tpd = limit_field("tpd", "Tokens (prompt and completion) per day")

    def limits(self) -> dict[str, int | None]:
        """The limits the request names (a PATCH leaves the others as they are)."""
        data = self.validated_data
        return {name: data[field] for name, (field, _) in LIMIT_FIELDS.items() if field in data}


class DeploymentNamesField(serializers.ListField):
    """Deployments by name: names in, the related deployments' names out."""

    def to_representation(self, manager):
        return sorted(deployment.name for deployment in manager.all())


class InferenceKeySerializer(LimitsSerializer, serializers.ModelSerializer):
    owner = serializers.CharField(source="owner_name", read_only=True, help_text="A username, or service:<name>.")
    user = serializers.SlugRelatedField(slug_field="username", read_only=True)
    service_account = serializers.SlugRelatedField(
        slug_field="name",
        queryset=ServiceAccount.objects.none(),
        required=False,
        allow_null=True,
        help_text="Create the key for this service account (one you manage) instead of for yourself.",
    )
    team = serializers.SlugRelatedField(
        slug_field="name",
        queryset=team_list(),
        required=False,
        allow_null=True,
        help_text="Whose quota the calls count against: one of the owner's teams (a service account's own team).",
    )
    deployments = DeploymentNamesField(
        child=serializers.CharField(max_length=63),
        required=False,
        max_length=500,
        help_text="Names of the deployments the key may call (unless all_deployments).",
    )
    allowed_sources = serializers.ListField(
        child=serializers.CharField(max_length=64),
        required=False,
        max_length=MAX_SOURCES * 4,
        help_text="IP addresses or CIDR networks the key may be used from; empty: anywhere.",
    )
    days = serializers.IntegerField(
        write_only=True,
        required=False,
        allow_null=True,
        min_value=1,
        help_text="Lifetime in days (INFERENCE_KEY_DEFAULT_DAYS when left out; at most INFERENCE_KEY_MAX_DAYS).",
    )
    is_active = serializers.BooleanField(read_only=True)

    class Meta:
        model = InferenceKey
        fields = [
            "id",
            "name",
            "prefix",
            "owner",
            "user",
            "service_account",
            "team",
            "all_deployments",
            "deployments",
            "allowed_sources",
            "rpm",
            "tpm",
            "tpd",
            "days",
            "created_at",
            "expires_at",
            "revoked_at",
            "last_used_at",
            "is_active",
        ]
        read_only_fields = ["prefix", "created_at", "expires_at", "revoked_at", "last_used_at"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        request = self.context.get("request")
        if request is not None and request.user.is_authenticated:
            # Only accounts the caller manages: another team's account reads as unknown (no enumeration).
            self.fields["service_account"].queryset = key_selectors.service_account_list(user=request.user)


class NewInferenceKeySerializer(InferenceKeySerializer):
    key = serializers.CharField(read_only=True, help_text="The key's value. Shown only in this response.")

    class Meta(InferenceKeySerializer.Meta):
        fields = [*InferenceKeySerializer.Meta.fields, "key"]


class ServiceAccountSerializer(serializers.ModelSerializer):
    team = serializers.SlugRelatedField(slug_field="name", queryset=team_list(), help_text="The owning team.")
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    is_active = serializers.SerializerMethodField()

    class Meta:
        model = ServiceAccount
        fields = ["id", "name", "team", "description", "created_by", "created_at", "disabled_at", "is_active"]
        read_only_fields = ["created_at", "disabled_at"]
        # The service checks uniqueness (one wording for the page and the API).
        extra_kwargs = {"name": {"validators": []}}

    def get_is_active(self, account: ServiceAccount) -> bool:
        return account.disabled_at is None


class TeamQuotaSerializer(LimitsSerializer):
    """A team's quota, addressed by the team's id."""

    id = serializers.IntegerField(read_only=True, help_text="The team's id.")
    team = serializers.CharField(read_only=True, help_text="The team's name.")
    updated_at = serializers.DateTimeField(read_only=True, allow_null=True)
    updated_by = serializers.CharField(read_only=True, allow_null=True)

    def to_representation(self, team):
        try:
            quota = team.inference_quota
        except TeamQuota.DoesNotExist:
            quota = None
        return {
            "id": team.pk,
            "team": team.name,
            **{name: getattr(quota, field, None) for name, (field, _) in LIMIT_FIELDS.items()},
            "updated_at": self.fields["updated_at"].to_representation(quota.updated_at) if quota else None,
            "updated_by": quota.updated_by.username if quota and quota.updated_by else None,
        }
