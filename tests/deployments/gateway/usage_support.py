"""Builders for the usage tests: inference keys made directly (no key service needed) and record dicts as the
inference log's flush hands them to add_usage."""

from __future__ import annotations

from datetime import timedelta
from itertools import count

from django.utils import timezone

from deployments.gateway.models import InferenceKey, ServiceAccount, hash_key

_serial = count(1)


def make_key(*, user=None, service_account=None, name: str = "app") -> InferenceKey:
    raw = InferenceKey.generate()
    return InferenceKey.objects.create(
        name=name,
        prefix=raw[:8],
        digest=hash_key(raw),
        user=user,
        service_account=service_account,
        team_id=service_account.team_id if service_account else None,
        expires_at=timezone.now() + timedelta(days=30),
    )


def make_service_account(team, name: str = "billing-app") -> ServiceAccount:
    return ServiceAccount.objects.create(name=name, team=team)


def call(
    *,
    started_at: str = "2025-03-01T10:00:00+00:00",
    key_id: int | None = 1,
    team_id: int | None = None,
    deployment_id: int | None = 7,
    adapter: str = "",
    status: int = 200,
    prompt_tokens: int = 10,
    completion_tokens: int = 20,
    duration_ms: float = 100.0,
) -> dict:
    """One record dict (the InferenceRecord fields the flush passes; the rest left at plausible values)."""
    number = next(_serial)
    return {
        "request_id": f"req-{number}",
        "trace_id": "",
        "key_id": key_id,
        "key_prefix": "llk_abcd",
        "owner": "someone",
        "team_id": team_id,
        "deployment_id": deployment_id,
        "deployment_name": "chat",
        "adapter": adapter,
        "route": "openai.chat",
        "stream": False,
        "started_at": started_at,
        "status": status,
        "error": "",
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "ttft_ms": None,
        "duration_ms": duration_ms,
        "client_ip": "127.0.0.1",
        "replica": "",
    }
