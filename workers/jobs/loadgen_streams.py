"""One streamed request and its token arrival times, in the three dialects a deployment answers through the
gateway: OpenAI chat completions, OpenAI completions (both SSE ending in `data: [DONE]`) and TGI's native
`/generate_stream` (SSE, one token per event, the last event carrying `details`).

The bodies are the protocols' own shapes: the OpenAI request as the `openai` client sends it (`stream_options`
asks for usage, so the server's token counts are used when it gives them) and TGI's `GenerateRequest` as the
`text-generation` client builds it (`inputs`, `parameters` with `details: true`, `stream: true`).

Timing: each read of the body carries the time the kernel received it (loadgen_http.py), so neither parsing nor
the other streams' work delays a stamp; the events a read completes share its stamp. The request's start is
stamped just before it is sent, its end when the stream's last event arrives (the rest of the body is then read
so the connection is kept for the next request). Only chunks that carry tokens are kept (see bench_figures.py
for what counts).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any

from workers.jobs.bench_figures import StreamRecord
from workers.jobs.loadgen_http import HTTPFailure, Pool, Response
from workers.jobs.loadgen_spec import Sampling

# TGI's timing headers (router/src/server.rs); kept when a server sends them, for the cross-check with its own figures.
SERVER_TIMING_HEADERS = (
    "x-compute-type",
    "x-compute-time",
    "x-total-time",
    "x-validation-time",
    "x-queue-time",
    "x-inference-time",
    "x-time-per-token",
    "x-prompt-tokens",
    "x-generated-tokens",
)
ERROR_BODY_CHARS = 300
DRAIN_SECONDS = 1.0
MAX_EVENT_BYTES = 16 * 1024 * 1024  # TGI's last event repeats the whole text: room for long answers


@dataclass
class Chunk:
    """What one SSE event says: tokens it carries, whether the stream is over, the server's counts, an error."""

    tokens: int = 0
    done: bool = False
    output_tokens: int | None = None
    prompt_tokens: int | None = None
    error: str | None = None


class OpenAIStream:
    """State of one OpenAI SSE stream (chat or completion)."""

    def __init__(self, chat: bool, sampling: Sampling) -> None:
        self.chat, self.continuous = chat, sampling.continuous_usage
        self.completion_tokens = 0

    def parse(self, data: bytes) -> Chunk:
        if data == b"[DONE]":
            return Chunk(done=True)
        event = json.loads(data)
        if not isinstance(event, dict):
            return Chunk(error="protocol")
        if "error" in event:
            return Chunk(error="stream_error")
        chunk = Chunk()
        usage = event.get("usage")
        if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
            chunk.output_tokens, chunk.prompt_tokens = usage["completion_tokens"], usage.get("prompt_tokens")
        for choice in event.get("choices") or ():
            if self.chat:
                delta = choice.get("delta") or {}
                text = delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning")
            else:
                text = choice.get("text")
            if text:
                chunk.tokens += 1
        if self.continuous and chunk.output_tokens is not None and event.get("choices"):
            # The server's running count says how many tokens this chunk carried (vLLM may send several at once).
            chunk.tokens = max(chunk.output_tokens - self.completion_tokens, 0) if chunk.tokens else 0
            self.completion_tokens = chunk.output_tokens
        return chunk


class TGIStream:
    """State of one TGI generate_stream: every event is one generated token; the last one has details."""

    def parse(self, data: bytes) -> Chunk:
        event = json.loads(data)
        if not isinstance(event, dict):
            return Chunk(error="protocol")
        if "error" in event:
            return Chunk(error="stream_error")
        if "token" not in event:
            return Chunk()
        chunk = Chunk(tokens=1)
        if event.get("generated_text") is not None or event.get("details") is not None:
            chunk.done = True
            details = event.get("details") or {}
            chunk.output_tokens = details.get("generated_tokens")
        return chunk


def request_path(dialect: str) -> str:
    return {
        "openai-chat": "/v1/chat/completions",
        "openai-completion": "/v1/completions",
        "tgi-generate-stream": "/generate_stream",
    }[dialect]


def request_body(dialect: str, *, model: str, prompt: str, max_tokens: int, sampling: Sampling) -> dict[str, Any]:
    if dialect == "tgi-generate-stream":
        greedy = not sampling.temperature
        parameters = {"max_new_tokens": max_tokens, "details": True, "do_sample": not greedy}
        if not greedy:
            parameters["temperature"] = sampling.temperature
        if sampling.top_p is not None and sampling.top_p < 1:
            parameters["top_p"] = sampling.top_p
        parameters.update({k: v for k, v in (("top_k", sampling.top_k), ("seed", sampling.seed)) if v is not None})
        return {"inputs": prompt, "parameters": parameters, "stream": True}
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "stream": True}
    if dialect == "openai-chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    body["temperature"] = sampling.temperature or 0.0
    optional = (("top_p", sampling.top_p), ("top_k", sampling.top_k), ("seed", sampling.seed))
    body.update({k: v for k, v in optional if v is not None})
    if sampling.ignore_eos:
        body["ignore_eos"] = True
    body["stream_options"] = {"include_usage": True}
    if sampling.continuous_usage:
        body["stream_options"]["continuous_usage_stats"] = True
    return body


async def stream_request(
    pool: Pool,
    path: str,
    *,
    dialect: str,
    body: bytes,
    headers: dict[str, str],
    sampling: Sampling,
    record: StreamRecord,
    timeout_s: float,
    lags: list[int] | None = None,
) -> StreamRecord:
    """Send one request and fill `record` with its start, token chunks, end, counts and outcome; `lags` gets, per
    read, how long after its arrival the generator had handled it (its own backlog, not a timing error)."""
    state = TGIStream() if dialect == "tgi-generate-stream" else OpenAIStream(dialect == "openai-chat", sampling)
    finished = False
    record.start_ns = time.perf_counter_ns()
    try:
        async with asyncio.timeout(timeout_s), pool.post(path, headers, body) as response:
            record.status = response.status
            record.server_timing = {k: response.headers[k] for k in SERVER_TIMING_HEADERS if k in response.headers}
            if response.status != 200:
                text = await response.text(ERROR_BODY_CHARS)
                return _failed(record, f"http_{response.status}", text)
            finished = await _read_events(response, state, record, lags)
            if finished:
                await _drain(response)
    except TimeoutError:
        return _failed(record, "timeout", f"no complete answer within {timeout_s:g} s")
    except HTTPFailure as exc:
        return _failed(record, exc.kind, str(exc))
    except StreamFailed as exc:
        return _failed(record, exc.error, exc.message)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:  # an event that is not JSON, or not the shape
        return _failed(record, "protocol", f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # one stream's surprise must not end the step: counted, with its type, as any error
        return _failed(record, "generator", f"{type(exc).__name__}: {exc}")
    record.end_ns = record.end_ns or time.perf_counter_ns()
    if not finished:
        message = f"the stream ended without its last event after {len(record.chunks)} token chunks"
        return _failed(record, "incomplete", message)
    return record


class StreamFailed(Exception):
    def __init__(self, error: str, message: str) -> None:
        super().__init__(message)
        self.error, self.message = error, message


async def _read_events(
    response: Response, state: OpenAIStream | TGIStream, record: StreamRecord, lags: list[int] | None
) -> bool:
    """Read the SSE body as it comes: the events a read completes carry that read's stamp (the kernel's receive
    time, loadgen_http.py). True when the stream's last event came."""
    pending = b""
    async for arrival, data in response.body():
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            if not line.startswith(b"data:"):
                continue  # blank separators, comments, `event:` lines
            payload = line[5:].strip()
            chunk = state.parse(payload)
            if chunk.error:
                raise StreamFailed(chunk.error, payload[:ERROR_BODY_CHARS].decode(errors="replace"))
            if chunk.tokens:
                record.chunks.append((arrival, chunk.tokens))
            if chunk.output_tokens is not None:
                record.output_tokens = chunk.output_tokens
            if chunk.prompt_tokens is not None:
                record.prompt_tokens = chunk.prompt_tokens
            if chunk.done:
                record.end_ns = arrival
                _lag(lags, arrival)
                return True
        _lag(lags, arrival)
        if len(pending) > MAX_EVENT_BYTES:
            raise StreamFailed("protocol", f"an event longer than {MAX_EVENT_BYTES} bytes")
    return False


def _lag(lags: list[int] | None, arrival: int) -> None:
    if lags is not None:
        lags.append(time.perf_counter_ns() - arrival)


async def _drain(response: Response) -> None:
    """The body's end (the chunked terminator) after the last event, so the connection can be kept."""
    with contextlib.suppress(HTTPFailure, TimeoutError):
        async with asyncio.timeout(DRAIN_SECONDS):
            async for _ in response.body():
                pass


def _failed(record: StreamRecord, error: str, message: str) -> StreamRecord:
    record.end_ns = record.end_ns or time.perf_counter_ns()
    record.error, record.error_message = error, message
    return record
