"""The playground: a prompt sent to a running deployment, tokens streamed back, the use audited.

Completion mode uses the text-generation client's generate_stream (POST / with stream). Chat mode posts to
/v1/chat/completions with stream over plain HTTP: the 0.7.0 client's chat(stream=True) breaks on current
TGI's chat deltas. The console reaches the server on its internal endpoint; browsers never do.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import aiohttp
from django.conf import settings

import audit
from console.errors import ApplicationError
from deployments.backends.base import Backend
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


async def stream_completion(endpoint: str, prompt: str, params: dict, *, key: str = "") -> AsyncIterator[dict]:
    from text_generation import AsyncClient

    client = AsyncClient(endpoint, headers=Backend.auth_headers(key), timeout=600)
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


async def stream_chat(endpoint: str, messages: list[dict], params: dict, *, key: str = "") -> AsyncIterator[dict]:
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
    finish, usage = None, None
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session,
        session.post(f"{endpoint}/v1/chat/completions", json=body, headers=Backend.auth_headers(key)) as response,
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
            if "error" in chunk:
                raise ApplicationError(
                    str(chunk["error"].get("message") if isinstance(chunk["error"], dict) else chunk["error"])
                )
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                yield {"type": "token", "text": (choice.get("delta") or {}).get("content") or ""}
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
        events = stream_chat(
            deployment.endpoint,
            [{"role": m.get("role", "user"), "content": str(m["content"])} for m in messages],
            params,
            key=key,
        )
    elif mode == "completion":
        if not prompt.strip():
            raise ApplicationError("Write a prompt.", field="prompt")
        events = stream_completion(deployment.endpoint, prompt, params, key=key)
    else:
        raise ApplicationError("mode is completion or chat.", field="mode")
    started = time.monotonic()
    first = None
    count = 0
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
        yield event


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
