"""The hash chain: how an event's hash is computed, and the chain lock.

hash = sha256(DOMAIN || the event's hashed columns joined by NUL), where the columns include the
previous event's hash. No column may contain NUL (text is cleaned at record time; JSON text escapes
it), so the joined form is unambiguous. The domain tag keeps these hashes apart from any other use
of SHA-256 over similar bytes.
"""

from __future__ import annotations

import hashlib
import hmac

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection

DOMAIN = b"llmdeploy-audit-event-v1\x00"
CHECKPOINT_DOMAIN = b"llmdeploy-audit-checkpoint-v1\x00"
GENESIS = "0" * 64
# Arbitrary constant naming the audit chain's advisory lock on PostgreSQL.
CHAIN_LOCK_KEY = 0x4C4C4D41554454  # "LLMAUDT"

# The hashed columns, in hashing order. The verifier selects exactly these.
HASHED_COLUMNS = (
    "id",
    "created_us",
    "actor_id",
    "actor_name",
    "actor_roles",
    "action",
    "source",
    "outcome",
    "target_type",
    "target_id",
    "target_name",
    "diff",
    "detail",
    "client_ip",
    "request_id",
    "trace_id",
    "prev_hash",
)


def payload(values) -> bytes:
    """The hashed bytes of one event from its HASHED_COLUMNS values (a row tuple or a list in that
    order). id and created_us are integers, actor_id an integer or None, every other column text."""
    actor_id = values[2]
    return (
        DOMAIN
        + "\x00".join(
            (str(values[0]), str(values[1]), "" if actor_id is None else str(actor_id), *values[3:17])
        ).encode()
    )


def event_hash(values) -> str:
    return hashlib.sha256(payload(values)).hexdigest()


def clean_text(value: str) -> str:
    return value.replace("\x00", "\ufffd")


def lock_chain() -> None:
    """Serialize chain writers until the transaction ends.

    PostgreSQL: a transaction-scoped advisory lock. SQLite: every transaction begins IMMEDIATE
    (settings), which already holds the database's write lock until commit.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("lock_chain() must run inside transaction.atomic()")
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [CHAIN_LOCK_KEY])


def database_now_us() -> int:
    """Microseconds since the epoch, by the database's clock."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT (extract(epoch from clock_timestamp()) * 1000000)::bigint")
        else:
            cursor.execute("SELECT CAST(ROUND((julianday('now') - 2440587.5) * 86400000000) AS INTEGER)")
        return int(cursor.fetchone()[0])


def checkpoint_signature(*, created_us: int, last_event_id: int, head_hash: str, count: int) -> str:
    if not settings.AUDIT_CHECKPOINT_KEY:  # a GPU agent (GPU_AGENT=true) holds no key, by design
        raise ImproperlyConfigured("AUDIT_CHECKPOINT_KEY is not set here: checkpoints are signed on the console")
    message = CHECKPOINT_DOMAIN + f"{created_us}:{last_event_id}:{head_hash}:{count}".encode()
    return hmac.new(settings.AUDIT_CHECKPOINT_KEY.encode(), message, hashlib.sha256).hexdigest()
