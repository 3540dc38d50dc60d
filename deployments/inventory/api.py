"""Inventory API: hosts and GPUs. Reading needs `view`; changes need `manage_inventory`."""

from __future__ import annotations

from django.db.models import Prefetch, Sum
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from console import roles
from console.api.viewsets import ConsoleModelViewSet
from console.permissions import require
from deployments.inventory import services as inventory
from deployments.inventory import sizing as planner
from deployments.inventory.forms import SizingForm
from deployments.inventory.serializers import GpuSerializer, HostSerializer
from deployments.models import Gpu, Host

WRITE = {
    "create": roles.MANAGE_INVENTORY,
    "update": roles.MANAGE_INVENTORY,
    "partial_update": roles.MANAGE_INVENTORY,
    "destroy": roles.MANAGE_INVENTORY,
}


def _gpus():
    return Gpu.objects.annotate(reserved=Sum("reservations__memory_bytes")).order_by("index")


class HostViewSet(ConsoleModelViewSet):
    """GPU hosts with their GPUs. Agents register hosts themselves; admins may add them by hand."""

    queryset = Host.objects.prefetch_related(Prefetch("gpus", queryset=_gpus()))
    serializer_class = HostSerializer
    action_permissions = WRITE
    search_fields = ["name", "address"]
    filterset_fields = ["status", "runtime"]
    ordering_fields = ["name", "last_heartbeat"]

    def perform_create(self, serializer):
        serializer.instance = inventory.host_create(actor=self.request.user, **serializer.validated_data)

    def perform_update(self, serializer):
        serializer.instance = inventory.host_update(
            actor=self.request.user, host=serializer.instance, **serializer.validated_data
        )

    def perform_destroy(self, instance):
        inventory.host_delete(actor=self.request.user, host=instance)


class GpuViewSet(ConsoleModelViewSet):
    """GPUs of all hosts; `?host=<name>` narrows to one host."""

    queryset = _gpus().select_related("host")
    serializer_class = GpuSerializer
    action_permissions = WRITE
    filterset_fields = ["host__name", "health", "nvlink_group"]
    search_fields = ["name", "uuid"]

    def perform_create(self, serializer):
        data = dict(serializer.validated_data)
        host = data.pop("host")
        serializer.instance = inventory.gpu_create(actor=self.request.user, host=host, **data)

    def perform_update(self, serializer):
        data = dict(serializer.validated_data)
        if data.get("host", serializer.instance.host) != serializer.instance.host:
            from rest_framework.exceptions import ValidationError

            raise ValidationError({"host": ["A GPU cannot move to another host; delete it and add it there."]})
        data.pop("host", None)
        serializer.instance = inventory.gpu_update(actor=self.request.user, gpu=serializer.instance, **data)

    def perform_destroy(self, instance):
        inventory.gpu_delete(actor=self.request.user, gpu=instance)


class SizingApiView(APIView):
    """The VRAM planner: `?source=org/name` (plus revision, backend, quantize, kv_cache_dtype, credential; TGI's
    max_total_tokens and max_batch_total_tokens, or vLLM's gpu_memory_utilization, max_model_len, max_num_seqs
    and max_num_batched_tokens) answers memory per precision and the smallest GPU set in the inventory that fits;
    for vLLM also `vllm` (its share of each GPU, KV cache tokens, sequences) and `details` (the same in words).
    Another backend's limits are ignored; a setting vLLM refuses is a 400 naming it."""

    @extend_schema(
        parameters=[
            OpenApiParameter(name, OpenApiTypes.STR, required=name == "source") for name in SizingForm.base_fields
        ],
        responses={200: OpenApiTypes.OBJECT},
    )
    def get(self, request):
        require(request.user, roles.VIEW)  # before any input is looked at
        form = SizingForm(request.query_params)
        if not form.is_valid():
            raise ValidationError(form.errors)
        return Response(planner.plan(user=request.user, **form.plan_arguments()))
