"""Talking to the Hub: who the requests say they come from, timeouts, which failures are retried and how long to wait.

The retry policy lives here only: resolve and transfer both read it at call time, so a test that sets
``hub.BACKOFF_BASE_S`` speeds up both.
"""

from __future__ import annotations

import http.client
import importlib.metadata
import random

import requests
import urllib3
from huggingface_hub import constants
from huggingface_hub.utils import build_hf_headers

LIBRARY_NAME = "llmdeploy-console"
try:
    LIBRARY_VERSION = importlib.metadata.version(LIBRARY_NAME)
except importlib.metadata.PackageNotFoundError:
    LIBRARY_VERSION = "dev"

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 20.0
"""A silent connection is given up (then resumed) after this long; it also bounds a cancel on a stalled socket."""
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
RETRY_AFTER_MAX_S = 60.0
RESOLVE_ATTEMPTS = 3

# Network failures worth retrying: the bytes on disk are kept and the next request resumes after them.
_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
)


def _endpoint(endpoint: str | None) -> str:
    return (endpoint or constants.ENDPOINT).rstrip("/")


def _headers(token: str | None) -> dict[str, str]:
    # token=False: send only the token the console gives, never one stored on this machine.
    return build_hf_headers(token=token or False, library_name=LIBRARY_NAME, library_version=LIBRARY_VERSION)


def _is_transient_status(response: requests.Response | None) -> bool:
    return response is not None and (response.status_code == 429 or response.status_code >= 500)


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    return min(float(value), RETRY_AFTER_MAX_S) if value.isdigit() else None


def _resolve_pause(attempt: int) -> float:
    """Seconds to wait after failed metadata request number ``attempt`` (1-based) before the next one."""
    return BACKOFF_BASE_S * attempt


def _retry_delay(failures: int) -> float:
    """Seconds to wait before retrying a file after ``failures`` attempts in a row brought no new bytes."""
    return min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)
