"""The variants of a base model over the API: `GET /api/v1/models/{id}/variants/`, the rows of the variants page.
Deploying one is the ordinary deployment create (`POST /api/v1/deployments/` with its artifact; an adapter:
`POST /api/v1/adapters/{id}/deploy/`), which answers 403 to a user without `deploy`."""

from __future__ import annotations

from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from console import roles
from console.permissions import may_deploy_anywhere, reachable, require, restrict
from deployments.models import ModelArtifact
from deployments.quality import variants


class ComparedSerializer(serializers.Serializer):
    value = serializers.FloatField(allow_null=True)
    base = serializers.FloatField(allow_null=True, help_text="The base's figure on the same terms.")
    delta = serializers.FloatField(allow_null=True)
    delta_percent = serializers.FloatField(allow_null=True)
    verdict = serializers.CharField(allow_null=True, help_text="better, worse or same, by the figure's direction.")
    note = serializers.CharField(help_text="On what data or at what load; or why there is no delta.")


class VariantSerializer(serializers.Serializer):
    artifact = serializers.IntegerField()
    repo_id = serializers.CharField()
    host = serializers.CharField()
    status = serializers.CharField()
    artifact_kind = serializers.CharField()
    parent = serializers.IntegerField(help_text="The artifact it was made from.")
    depth = serializers.IntegerField()
    kind = serializers.CharField(help_text="quantized, adapter, merged, fine-tuned or derived.")
    made_by = serializers.CharField(help_text="The quantization scheme or the training method.")
    scheme = serializers.CharField(allow_null=True)
    size_bytes = serializers.IntegerField(allow_null=True)
    weight_bytes = serializers.IntegerField(allow_null=True)
    weight_note = serializers.CharField()
    perplexity = ComparedSerializer()
    accuracy = ComparedSerializer()
    output_tokens_per_s = ComparedSerializer()
    ttft_ms_p50 = ComparedSerializer()
    benchmark = serializers.DictField(help_text="The level compared, and the variant's and the base's run ids.")
    deploy = serializers.CharField(allow_null=True, help_text="Where to POST to deploy it (null: not ready).")


class ClaimSerializer(serializers.Serializer):
    claim = serializers.CharField()
    scheme = serializers.CharField()
    artifact = serializers.IntegerField(allow_null=True)
    measured = serializers.DictField(child=serializers.FloatField())
    claimed = serializers.DictField(child=serializers.FloatField())
    detail = serializers.CharField()
    missing = serializers.ListField(child=serializers.CharField())


class VariantTableSerializer(serializers.Serializer):
    base = serializers.IntegerField()
    base_size_bytes = serializers.IntegerField(allow_null=True)
    base_weight_bytes = serializers.IntegerField(allow_null=True)
    base_weight_note = serializers.CharField()
    can_deploy = serializers.BooleanField()
    variants = VariantSerializer(many=True)
    claims = ClaimSerializer(many=True)


def _deploy_endpoint(artifact: ModelArtifact) -> str | None:
    if artifact.status != ModelArtifact.Status.READY:
        return None
    if artifact.kind == ModelArtifact.Kind.ADAPTER:
        return reverse("api:adapter-deploy", args=[artifact.pk])
    return reverse("api:deployment-list")


class ArtifactVariantsView(APIView):
    """Every artifact derived from this model (quantized, fine-tuned, adapters, merged) with size, weight memory,
    perplexity and accuracy against the base on the same data, benchmark figures against the base's, and the seed's
    claims measured."""

    @extend_schema(responses={200: VariantTableSerializer})
    def get(self, request, pk):
        require(request.user, roles.VIEW)
        visible = restrict(ModelArtifact.objects.select_related("repo", "host"), request.user, roles.VIEW)
        base = reachable(visible, request.user, roles.VIEW, pk)
        table = variants.variant_table(base, user=request.user)
        return Response(
            {
                "base": base.pk,
                "base_size_bytes": table.base_size_bytes,
                "base_weight_bytes": table.base_weight_bytes,
                "base_weight_note": table.base_weight_note,
                "can_deploy": may_deploy_anywhere(request.user),
                "variants": [{**v.as_dict(), "deploy": _deploy_endpoint(v.artifact)} for v in table.variants],
                "claims": [claim.as_dict() for claim in table.claims],
            }
        )
