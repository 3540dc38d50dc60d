"""vLLM (0.34.0), the second serving backend: `vllm serve <model>` and its OpenAI-compatible API."""

from __future__ import annotations

from typing import Any

import requests

from deployments.backends.base import COMMON_SPEC_FIELDS, Backend, LaunchPlan, MemorySemantics
from deployments.backends.vllm import launch, logmask
from deployments.backends.vllm.checks import CHECKS
from deployments.backends.vllm.diagnosis import BOOK


class VllmBackend(Backend):
    name = "vllm"
    label = "vLLM"
    launcher = ("vllm", "serve")
    launcher_stand_in = "vllm_serve"
    spec_fields = COMMON_SPEC_FIELDS | {
        "gpu_memory_utilization",
        "max_model_len",
        "max_num_seqs",
        "max_num_batched_tokens",
    }
    default_image = launch.DEFAULT_IMAGE
    container_port = launch.CONTAINER_PORT
    container_model_store = launch.CONTAINER_MODEL_STORE
    allowed_env = launch.ALLOWED_ENV
    token_file_env = launch.TOKEN_FILE_ENV
    server_key_env = launch.SERVER_KEY_ENV
    ready_line = launch.READY_LINE
    # vLLM's Prometheus names (vllm/v1/metrics/loggers.py of 0.34.0), served at /metrics on the API port. Counters
    # are exported with a _total suffix.
    metric_names = (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries",
        "vllm:prefix_cache_hits",
        "vllm:num_preemptions",
        "vllm:prompt_tokens",
        "vllm:generation_tokens",
        "vllm:request_success",
        "vllm:request_prompt_tokens",
        "vllm:request_generation_tokens",
        "vllm:iteration_tokens_total",
        "vllm:time_to_first_token_seconds",
        "vllm:inter_token_latency_seconds",
        "vllm:e2e_request_latency_seconds",
        "vllm:request_queue_time_seconds",
        "vllm:request_inference_time_seconds",
        "vllm:request_prefill_time_seconds",
        "vllm:request_decode_time_seconds",
    )
    memory = MemorySemantics(
        keep_free_fraction=0.0,
        kv_cache="gpu_memory_utilization (vLLM takes that share of each GPU at start and fills what the weights and "
        "activations leave with KV-cache blocks)",
        mode="reserve",
        default_utilization=launch.DEFAULT_GPU_MEMORY_UTILIZATION,
    )
    rules = BOOK
    spec_checks = CHECKS
    native_generate_routes = False  # /generate and /info are TGI's; the gateway translates to /v1/completions

    def launch_plan(self, **where: Any) -> LaunchPlan:
        return launch.launch_plan(**where)

    def launcher_args(self, spec: Any, plan: LaunchPlan) -> list[str]:
        return launch.launcher_args(spec, plan)

    def launch_env(self, spec: Any, *, gpu_indexes: list[int], native: bool) -> dict[str, str]:
        return launch.launch_env(spec, gpu_indexes=gpu_indexes, native=native)

    def served_model_name(self, spec: Any, *, deployment_name: str) -> str:
        """The model's Hub id, as launcher_args passes it in --served-model-name (the same on every server of the
        deployment); the gateway and the playground send it as `model`."""
        return launch.served_model_name(spec)

    def info(self, endpoint: str, timeout: float = 5.0, *, key: str = "") -> dict | None:
        """What the server says of itself, in the keys the console reads from TGI's /info: GET /v1/models (the
        served model, its root path, its max_model_len and the LoRA adapters) and GET /version. None when
        /v1/models does not answer with a model list."""
        headers = self.auth_headers(key)
        try:
            response = requests.get(f"{endpoint}/v1/models", timeout=timeout, headers=headers)
            cards = response.json().get("data") if response.status_code == 200 else None
        except (requests.RequestException, ValueError, AttributeError):
            return None
        if not isinstance(cards, list):
            return None
        cards = [card for card in cards if isinstance(card, dict)]
        base = next((card for card in cards if not card.get("parent")), cards[0] if cards else {})
        about: dict = {}
        try:
            answer = requests.get(f"{endpoint}/version", timeout=timeout, headers=headers)
            about = answer.json() if answer.status_code == 200 else {}
        except (requests.RequestException, ValueError):
            pass  # a proxy without it: the rest still says what runs
        about = about if isinstance(about, dict) else {}
        version = about.get("version")
        max_model_len = base.get("max_model_len")
        return {
            "model_id": base.get("id"),
            "served_model_name": base.get("id"),
            "model_path": base.get("root"),
            "max_model_len": max_model_len,
            # TGI's name for the longest request (prompt and output), which the console records for every backend.
            "max_total_tokens": max_model_len,
            "version": str(version) if version else None,
            "adapters": [card.get("id") for card in cards if card.get("parent")],
            # vLLM's /version says only its version; the development server adds who it is.
            "served_by": about.get("served_by") or "vllm",
        }

    def server_name(self, info: dict | None) -> str:
        if (info or {}).get("served_by") == launch.DEVELOPMENT_SERVER:
            return f"{launch.DEVELOPMENT_SERVER_NAME} {(info or {}).get('version') or ''}".strip()
        return super().server_name(info)

    def mask_request_content(self, lines: list[str], *, carry: bool = False) -> tuple[list[str], bool]:
        return logmask.mask_lines(lines, carry=carry)
