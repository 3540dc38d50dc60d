"""What an inference record's hash covers, and in which form: one definition used when a batch is sealed
(records.flush) and when it is checked again (verify.py).

A record is stored exactly as `normalise` made it and hashed from `canonical`, which reads a value fetched back from
the database the same way on PostgreSQL and SQLite (times as UTC ISO-8601 with microseconds, addresses as their
bytes, numbers in the prompt as jsonb gives them back). So a row read back hashes as it did when sealed, unless
someone changed it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import uuid
from datetime import UTC, datetime
from typing import Any

from django.db import models

from deployments.gateway.models import InferenceRecord

# Every stored field of a record except its place (id, batch_id, position), in one fixed order. A new field of
# InferenceRecord must be added here (a test compares the two), and changes the hash of records sealed after it.
RECORD_FIELDS = (
    "request_id",
    "trace_id",
    "key_id",
    "key_prefix",
    "owner",
    "team_id",
    "deployment_id",
    "deployment_name",
    "adapter",
    "route",
    "stream",
    "started_at",
    "status",
    "error",
    "prompt_tokens",
    "completion_tokens",
    "ttft_ms",
    "duration_ms",
    "client_ip",
    "replica",
    "prompt",
    "completion",
)
PLACE_FIELDS = ("id", "batch_id", "position")
_FIELDS = {field.name: field for field in InferenceRecord._meta.concrete_fields}
_INT_RANGES = {  # what each integer column holds on PostgreSQL (a value outside would fail the whole batch)
    models.PositiveSmallIntegerField: (0, 32_767),
    models.PositiveIntegerField: (0, 2_147_483_647),
    models.BigIntegerField: (-(2**63), 2**63 - 1),
}


def clean_text(value: Any) -> str:
    # PostgreSQL stores no NUL and UTF-8 has no lone surrogate: either in one record would fail its whole batch.
    text = value if isinstance(value, str) else str(value)
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def json_value(value: Any) -> Any:
    """A prompt as it reads back from jsonb and from SQLite alike: whole floats as integers (jsonb gives 1e20 back
    as 100000000000000000000), no NaN or infinity (not JSON), text cleaned."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return int(value) if value.is_integer() else value
    if isinstance(value, dict):
        return {clean_text(key): json_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(item) for item in value]
    return clean_text(value)


def _moment(value: Any, fallback: datetime) -> datetime:
    moment = value if isinstance(value, datetime) else None
    if moment is None and value:
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError:
            moment = None
    moment = moment or fallback
    return (moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment).astimezone(UTC)


def _ip(value: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(str(value).strip()) if value else None
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        address = ipaddress.IPv6Address(address.packed)  # a zone (fe80::1%eth0) is not stored by PostgreSQL's inet
    return address


def _address(value: Any) -> str | None:
    address = _ip(value)
    return str(address) if address is not None else None


def _address_key(value: Any) -> str | None:
    # The address's bytes, not its spelling: PostgreSQL, Django and Python versions spell some differently
    # (::ffff:1.2.3.4 or ::ffff:102:304), and a record must hash the same whichever read it back.
    address = _ip(value)
    return address.packed.hex() if address is not None else None


def _integer(field: models.Field, value: Any) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return None if field.null else int(field.default if field.has_default() else 0)
    low, high = next(bounds for kind, bounds in _INT_RANGES.items() if isinstance(field, kind))
    return min(max(number, low), high)


def _number(field: models.Field, value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if math.isfinite(number):
        return number
    return None if field.null else float(field.default if field.has_default() else 0)


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes"}
    return bool(value)


def _value(field: models.Field, value: Any, received: datetime) -> Any:
    if isinstance(field, models.DateTimeField):
        return _moment(value, received)
    if isinstance(field, models.GenericIPAddressField):
        return _address(value)
    if isinstance(field, models.JSONField):
        return json_value(value)
    if isinstance(field, models.BooleanField):
        return _flag(value)
    if isinstance(field, models.FloatField):
        return _number(field, value)
    if isinstance(field, models.IntegerField):  # every integer kind
        return None if value is None and field.null else _integer(field, value)
    text = clean_text(value) if value is not None else ""
    return text[: field.max_length] if field.max_length else text


def normalise(record: dict, *, received: datetime) -> dict:
    """The record as it will be stored: every RECORD_FIELDS value of the model's type, within what its column holds
    (texts cut to their length, numbers to their range, a bad address left out). `received` stands for a missing or
    unreadable started_at; a missing request id gets a fresh one (it is the record's unique name)."""
    values = {name: _value(_FIELDS[name], record.get(name), received) for name in RECORD_FIELDS}
    if not values["request_id"]:
        values["request_id"] = uuid.uuid4().hex
    return values


def canonical(values: dict) -> dict:
    """The JSON form a record's hash is taken from (values as normalise makes them or as the database returns
    them)."""
    form = {}
    for name in RECORD_FIELDS:
        value = values.get(name)
        field = _FIELDS[name]
        if isinstance(field, models.DateTimeField):
            value = value.astimezone(UTC).isoformat(timespec="microseconds") if value is not None else None
        elif isinstance(field, models.GenericIPAddressField):
            value = _address_key(value)
        elif isinstance(field, models.JSONField):
            value = json_value(value)
        elif isinstance(field, models.FloatField):
            value = None if value is None else float(value)
        form[name] = value
    return form


def record_hash(values: dict) -> str:
    """SHA-256 of the record's canonical JSON (sorted keys, no spaces, ASCII)."""
    text = json.dumps(canonical(values), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def batch_digest(hashes: list[str]) -> str:
    """SHA-256 of the batch's hashes list, in position order, as canonical JSON."""
    return hashlib.sha256(json.dumps(list(hashes), separators=(",", ":")).encode()).hexdigest()
