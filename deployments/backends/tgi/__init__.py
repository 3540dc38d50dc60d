"""Text Generation Inference (TGI 3.3), the backend the console was asked for."""

from __future__ import annotations

from typing import Any

from deployments.backends.base import COMMON_SPEC_FIELDS, Backend, LaunchPlan, MemorySemantics
from deployments.backends.tgi import launch, logmask
from deployments.backends.tgi.checks import CHECKS, quantize_from_checkpoint
from deployments.backends.tgi.diagnosis import BOOK
from deployments.sizing.memory import TGI_WIGGLE_ROOM


class TgiBackend(Backend):
    name = "tgi"
    label = "Text Generation Inference"
    launcher = ("text-generation-launcher",)
    launcher_stand_in = "serve"
    spec_fields = COMMON_SPEC_FIELDS | {
        "max_input_tokens",
        "max_total_tokens",
        "max_batch_prefill_tokens",
        "max_concurrent_requests",
        "cuda_memory_fraction",
    }
    default_image = launch.DEFAULT_IMAGE
    container_port = launch.CONTAINER_PORT
    container_model_store = launch.CONTAINER_MODEL_STORE
    allowed_env = launch.ALLOWED_ENV
    token_file_env = launch.TOKEN_FILE_ENV
    server_key_env = launch.SERVER_KEY_ENV
    ready_line = launch.READY_LINE
    # The router's Prometheus names (no _total suffix), as serve.py exports them too.
    metric_names = (
        "tgi_request_count",
        "tgi_request_success",
        "tgi_request_failure",
        "tgi_request_duration",
        "tgi_request_queue_duration",
        "tgi_request_inference_duration",
        "tgi_request_mean_time_per_token_duration",
        "tgi_request_generated_tokens",
        "tgi_request_input_length",
        "tgi_request_max_new_tokens",
        "tgi_batch_current_size",
        "tgi_batch_inference_count",
        "tgi_batch_inference_success",
        "tgi_batch_inference_duration",
        "tgi_batch_forward_duration",
        "tgi_queue_size",
    )
    memory = MemorySemantics(
        keep_free_fraction=1 - TGI_WIGGLE_ROOM,
        kv_cache="max_batch_total_tokens (warm-up fills what the weights leave, up to the wiggle room)",
    )
    rules = BOOK
    spec_checks = CHECKS
    native_generate_routes = True

    def server_name(self, info: dict | None) -> str:
        if (info or {}).get("served_by") == launch.DEVELOPMENT_SERVER:
            return f"{launch.DEVELOPMENT_SERVER_NAME} {(info or {}).get('version') or ''}".strip()
        return super().server_name(info)

    def launch_plan(self, **where: Any) -> LaunchPlan:
        return launch.launch_plan(**where)

    def default_quantize(self, values: dict[str, Any], checkpoint: dict[str, Any]) -> str:
        return quantize_from_checkpoint(values, checkpoint)

    def launcher_args(self, spec: Any, plan: LaunchPlan) -> list[str]:
        return launch.launcher_args(spec, plan)

    def launch_env(self, spec: Any, *, gpu_indexes: list[int], native: bool) -> dict[str, str]:
        return launch.launch_env(spec, gpu_indexes=gpu_indexes, native=native)

    def mask_request_content(self, lines: list[str], *, carry: bool = False) -> tuple[list[str], bool]:
        return logmask.mask_lines(lines, carry=carry)
