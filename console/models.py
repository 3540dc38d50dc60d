"""Models of the console app (label `console`); they live with the accounts domain."""

from console.accounts.models import (
    TOKEN_PREFIX,
    ApiToken,
    ApiTokenQuerySet,
    Capability,
    Credential,
    LoginFailureWindow,
    PasswordState,
    hash_token,
)

__all__ = [
    "TOKEN_PREFIX",
    "ApiToken",
    "ApiTokenQuerySet",
    "Capability",
    "Credential",
    "LoginFailureWindow",
    "PasswordState",
    "hash_token",
]
