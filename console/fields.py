"""A model field for secrets: encrypted at rest, masked everywhere it could leak."""

from __future__ import annotations

from django.db import models

from console import crypto

MASK = "********"


class Secret:
    """A secret value. str() and repr() show a mask; only reveal() gives the plain text.

    Keeping the plain value behind a method means a log line, an f-string, a template, a diff or
    a serializer that forgets to exclude the field still prints the mask.
    """

    __slots__ = ("_plain",)

    def __init__(self, plain: str) -> None:
        self._plain = plain

    def reveal(self) -> str:
        return self._plain

    def __str__(self) -> str:
        return MASK

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._plain == self._plain

    def __hash__(self) -> int:
        return hash(self._plain)

    def __bool__(self) -> bool:
        return bool(self._plain)


class EncryptedSecretField(models.TextField):
    """Stores Fernet ciphertext; Python code sees a Secret. Re-encrypted by rotate_secrets_key."""

    def from_db_value(self, value, expression, connection):
        if value is None:
            return None
        return Secret(crypto.decrypt(value))

    def to_python(self, value):
        if value is None or isinstance(value, Secret):
            return value
        return Secret(str(value))

    def get_prep_value(self, value):
        if value is None:
            return None
        plain = value.reveal() if isinstance(value, Secret) else str(value)
        return crypto.encrypt(plain)

    def value_to_string(self, obj) -> str:
        # Serialization (dumpdata, fixtures) never writes the plain value.
        return MASK
