"""Errors in the caller's dialect: OpenAI error objects on /v1, TGI's {"error", "error_type"} on /llm.

One list of what can go wrong, each with its HTTP status and both spellings, so the two route families can never
disagree on a status. The clients' reading of them is in docs/api.md ("The inference gateway").
"""

from __future__ import annotations

import json
from dataclasses import dataclass

OPENAI = "openai"
TGI = "tgi"


@dataclass(frozen=True)
class Problem:
    status: int
    openai_type: str
    openai_code: str
    tgi_type: str


UNAUTHENTICATED = Problem(401, "authentication_error", "invalid_api_key", "unauthorized")
FORBIDDEN = Problem(403, "permission_error", "model_not_allowed", "forbidden")
SOURCE_REFUSED = Problem(403, "permission_error", "source_not_allowed", "forbidden")
NOT_FOUND = Problem(404, "invalid_request_error", "model_not_found", "not_found")
ROUTE_NOT_FOUND = Problem(404, "invalid_request_error", "unknown_url", "not_found")
METHOD = Problem(405, "invalid_request_error", "method_not_allowed", "method_not_allowed")
BAD_REQUEST = Problem(400, "invalid_request_error", "invalid_request", "validation")
TOO_LARGE = Problem(413, "invalid_request_error", "request_too_large", "validation")
QUOTA = Problem(429, "rate_limit_error", "rate_limit_exceeded", "rate_limited")
NOT_RUNNING = Problem(503, "server_error", "model_not_running", "unavailable")
UPSTREAM = Problem(502, "server_error", "upstream_error", "generation")
GATEWAY_FAILED = Problem(503, "server_error", "gateway_error", "unavailable")


def error_body(dialect: str, problem: Problem, message: str, *, param: str | None = None) -> dict:
    if dialect == OPENAI:
        return {"error": {"message": message, "type": problem.openai_type, "param": param, "code": problem.openai_code}}
    return {"error": message, "error_type": problem.tgi_type}


def stream_error_event(dialect: str, problem: Problem, message: str) -> bytes:
    """An error inside an event stream: how each dialect ends a stream with a reason (the status is already 200).
    The openai client raises APIError on it; the text-generation client raises from parse_error."""
    body = error_body(dialect, problem, message)
    if dialect == OPENAI:
        return b"data: " + json.dumps(body).encode() + b"\n\n"
    return b"data:" + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def dialect_of(path: str) -> str:
    return TGI if path.startswith("/llm/") else OPENAI
