"""Encryption of stored secrets with MultiFernet over SECRETS_ENCRYPTION_KEYS (newest first)."""

from __future__ import annotations

from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


@cache
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise ImproperlyConfigured("SECRETS_ENCRYPTION_KEYS is empty")
    try:
        return MultiFernet([Fernet(key.encode()) for key in keys])
    except ValueError as exc:
        raise ImproperlyConfigured(f"SECRETS_ENCRYPTION_KEYS holds a malformed key: {exc}") from None


def fernet() -> MultiFernet:
    return _fernet(tuple(settings.SECRETS_ENCRYPTION_KEYS))


def encrypt(plain: str) -> str:
    return fernet().encrypt(plain.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise ImproperlyConfigured(
            "A stored secret cannot be decrypted with any key in SECRETS_ENCRYPTION_KEYS: "
            "was a key removed before `manage.py rotate_secrets_key` ran?"
        ) from None


def encrypted_with_newest(token: str) -> bool:
    """True when the newest key alone decrypts token (rotation is complete for it)."""
    newest = settings.SECRETS_ENCRYPTION_KEYS[0]
    try:
        Fernet(newest.encode()).decrypt(token.encode())
    except InvalidToken:
        return False
    return True
