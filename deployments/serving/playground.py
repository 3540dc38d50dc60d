"""The playground: a prompt sent to a running deployment, tokens streamed back, the use audited.

TGI: completion mode uses the text-generation client's generate_stream (POST / with stream). Chat mode posts to
/v1/chat/completions with stream over plain HTTP: the 0.7.0 client's chat(stream=True) breaks on current
TGI's chat deltas. A backend without TGI's routes (vLLM) gets both modes on its OpenAI routes
(/v1/completions, /v1/chat/completions, streaming) for the model name it serves, with the page's settings meaning
what they mean for TGI (greedy unless sampling is asked for). The console reaches the server on its internal
endpoint; browsers never do. Each use is a span `playground <mode>` whose traceparent the server receives, so a
server that traces (TGI with --otlp-endpoint) continues the trace.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import aiohttp
from django.conf import settings
from opentelemetry import trace
from opentelemetry.trace import SpanKind

import audit
from audit.telemetry import mark_failed, trace_headers, tracer
from console.errors import ApplicationError
from console.stream_db import database_sync_to_async
from deployments.backends import get_backend
from deployments.backends.base import Backend
from deployments.gateway.tgi_translate import TranslationError, completion_request
from deployments.models import Deployment

MAX_NEW_TOKENS = 2048
PARAMETERS = {
    "max_new_tokens": int,
    "temperature": float,
    "top_p": float,
    "top_k": int,
    "repetition_penalty": float,
    "seed": int,
    "do_sample": bool,
}


def clean_parameters(raw: dict) -> dict:
    """Sampling settings from the page, typed and bounded; empty values dropped."""
    params = {}
    for name, kind in PARAMETERS.items():
        value = (raw or {}).get(name)
        if value in (None, ""):
            continue
        try:
            params[name] = kind(value)
        except (TypeError, ValueError):
            raise ApplicationError(f"{name} must be a {kind.__name__}.", field=name) from None
    params["max_new_tokens"] = max(1, min(params.get("max_new_tokens", 64), MAX_NEW_TOKENS))
    if params.get("temperature") is not None and params["temperature"] <= 0:
        params.pop("temperature")  # TGI refuses 0; greedy is do_sample false
        params["do_sample"] = False
    return params


async def stream_completion(
    endpoint: str, prompt: str, params: dict, *, key: str = "", headers: dict | None = None
) -> AsyncIterator[dict]:
    from text_generation import AsyncClient

    client = AsyncClient(endpoint, headers={**(headers or {}), **Backend.auth_headers(key)}, timeout=600)
    async for event in client.generate_stream(prompt, **params):
        if event.details is not None:
            yield {"type": "token", "text": "" if event.token.special else event.token.text}
            yield {
                "type": "end",
                "generated_tokens": event.details.generated_tokens,
                "finish_reason": event.details.finish_reason.value,
            }
            return
        yield {"type": "token", "text": "" if event.token.special else event.token.text}


async def stream_chat(
    endpoint: str, messages: list[dict], params: dict, *, key: str = "", headers: dict | None = None
) -> AsyncIterator[dict]:
    body = {
        "model": "tgi",
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": params.get("max_new_tokens"),
    }
    if params.get("do_sample") is False:
        body["temperature"] = 0
    for name in ("temperature", "top_p", "seed"):
        if params.get(name) is not None:
            body[name] = params[name]
    async for event in stream_openai(endpoint, "/v1/chat/completions", body, key=key, headers=headers):
        yield event


def openai_request(params: dict, *, model: str, prompt: str = "", messages: list | None = None) -> tuple[str, dict]:
    """The route and streaming body for a server with only OpenAI's routes: the page's settings translated as the
    gateway translates TGI's (greedy is temperature 0; top_k and repetition_penalty are vLLM's extensions)."""
    try:
        body, _ = completion_request({"inputs": prompt or "-", "parameters": params}, model=model, stream=True)
    except TranslationError as refusal:
        raise ApplicationError(refusal.message) from None
    for name in ("logprobs", "return_token_ids", "include_stop_str_in_output"):
        body.pop(name, None)  # what the gateway needs to rebuild TGI's tokens; the page shows text only
    if messages is None:
        return "/v1/completions", body
    del body["prompt"]
    return "/v1/chat/completions", {**body, "messages": messages}


async def stream_openai(
    endpoint: str, path: str, body: dict, *, key: str = "", headers: dict | None = None
) -> AsyncIterator[dict]:
    """A streaming OpenAI chat or text completion: a token event per chunk's text, then the usage and finish."""
    finish, usage = None, None
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session,
        session.post(
            f"{endpoint}{path}", json=body, headers={**(headers or {}), **Backend.auth_headers(key)}
        ) as response,
    ):
        if response.status != 200:
            raise ApplicationError(f"The server answered {response.status}: {(await response.text())[:300]}")
        async for raw in response.content:
            line = raw.decode("utf-8", errors="replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[len("data:") :].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk or chunk.get("object") == "error":  # vLLM before 0.10: {"object": "error", ...}
                error = chunk.get("error", chunk)
                raise ApplicationError(str(error.get("message") if isinstance(error, dict) else error))
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content") if "delta" in choice else choice.get("text")
                yield {"type": "token", "text": text or ""}
                finish = choice.get("finish_reason") or finish
    yield {
        "type": "end",
        "generated_tokens": (usage or {}).get("completion_tokens"),
        "prompt_tokens": (usage or {}).get("prompt_tokens"),
        "finish_reason": finish,
    }


async def run(
    deployment: Deployment, *, mode: str, prompt: str = "", messages: list | None = None, parameters: dict | None = None
) -> AsyncIterator[dict]:
    """Stream one generation: token events, then a summary with token counts and time to first token."""
    if deployment.state != Deployment.State.RUNNING or not deployment.endpoint:
        raise ApplicationError(f"{deployment} is {deployment.get_state_display()}; launch it first.")
    params = clean_parameters(parameters or {})
    key = deployment.server_key.reveal() if deployment.server_key else ""
    if mode == "chat":
        if not messages or not all(isinstance(m, dict) and m.get("content") for m in messages):
            raise ApplicationError("Write a message.", field="messages")
        messages = [{"role": m.get("role", "user"), "content": str(m["content"])} for m in messages]
    elif mode == "completion":
        if not prompt.strip():
            raise ApplicationError("Write a prompt.", field="prompt")
    else:
        raise ApplicationError("mode is completion or chat.", field="mode")
    model = await database_sync_to_async(_openai_model)(deployment)
    # Not the current span: a generator's context is not the consumer's between events.
    span = tracer.start_span(
        f"playground {mode}",
        kind=SpanKind.CLIENT,
        attributes={"llmdeploy.deployment.id": deployment.pk, "gen_ai.request.model": deployment.name},
    )
    with trace.use_span(span, end_on_exit=False):
        headers = trace_headers()
    if model is None:
        events = (
            stream_chat(deployment.endpoint, messages, params, key=key, headers=headers)
            if mode == "chat"
            else stream_completion(deployment.endpoint, prompt, params, key=key, headers=headers)
        )
    else:
        path, body = openai_request(params, model=model, prompt=prompt, messages=messages if mode == "chat" else None)
        events = stream_openai(deployment.endpoint, path, body, key=key, headers=headers)
    started = time.monotonic()
    first = None
    count = 0
    try:
        async for event in events:
            if event["type"] == "token":
                count += 1
                if first is None:
                    first = time.monotonic() - started
            else:
                event.update(
                    generated_tokens=event.get("generated_tokens") or count,
                    ttft_ms=round((first or 0) * 1000, 1),
                    total_ms=round((time.monotonic() - started) * 1000, 1),
                    parameters=params,
                )
                span.set_attribute("gen_ai.usage.output_tokens", event["generated_tokens"])
            yield event
    except Exception as exc:
        mark_failed(span, str(exc))
        raise
    finally:
        span.end()


def _openai_model(deployment: Deployment) -> str | None:
    """The `model` to send to a server that has only OpenAI's routes; None for one with TGI's (sync: it may read
    the spec's model)."""
    spec = deployment.spec
    backend = get_backend(spec.backend if spec else "")
    if backend.native_generate_routes:
        return None
    return backend.upstream_model(backend.served_model_name(spec, deployment_name=deployment.name), None)


def record_use(
    user,
    deployment: Deployment,
    *,
    mode: str,
    summary: dict,
    error: str = "",
    prompt: str = "",
    messages: list | None = None,
) -> None:
    """One audit event per use, failed ones too: who, which deployment, mode, token counts or the error; the
    text only if a setting says so."""
    detail = {
        "mode": mode,
        "generated_tokens": summary.get("generated_tokens"),
        "prompt_tokens": summary.get("prompt_tokens"),
        "ttft_ms": summary.get("ttft_ms"),
        "finish_reason": summary.get("finish_reason"),
        "version": deployment.spec.version if deployment.spec else None,
    }
    if error:
        detail["error"] = error[:500]
    if settings.PLAYGROUND_AUDIT_PROMPTS:
        detail["prompt"] = prompt if mode == "completion" else messages
    audit.record(
        action="deployment.used",
        actor=user,
        target=deployment,
        outcome="failure" if error else "success",
        detail=detail,
    )
