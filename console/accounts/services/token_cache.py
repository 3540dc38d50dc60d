"""A per-process cache of authenticated API tokens, so a token call costs no database query most of the time.

An entry holds the token row, its user and the user's role actions (console.permissions reads them once per user
object). It is trusted for at most TTL_SECONDS, and the whole cache is emptied in this process whenever a token,
a user or a user's groups change (revocation, deactivation, role change), both at once and when the change
commits. Another process sees such a change within TTL_SECONDS. Expiry is checked on every call, on the
cached row.
"""

from __future__ import annotations

import copy
import threading
import time

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save

from console.accounts.models import ApiToken

TTL_SECONDS = 5.0  # how long another process's revocation may go unseen here
MAX_ENTRIES = 4096  # one per live token at most; full means emptied, not an unbounded dict

_clock = time.monotonic  # tests move it
_entries: dict[str, tuple[float, ApiToken]] = {}
_lock = threading.Lock()


def get(digest: str) -> ApiToken | None:
    """A private copy of the cached token (and of its user) under this digest, or None when absent or stale."""
    entry = _entries.get(digest)
    if entry is None:
        return None
    stored_at, token = entry
    if _clock() - stored_at > TTL_SECONDS:
        _entries.pop(digest, None)
        return None
    # Copies: a request may set attributes on its user (permission caches) that must not leak into the next one.
    fresh = copy.copy(token)
    fresh.user = copy.copy(token.user)
    return fresh


def put(digest: str, token: ApiToken) -> None:
    with _lock:
        if len(_entries) >= MAX_ENTRIES:
            _entries.clear()
        _entries[digest] = (_clock(), token)


def forget(digest: str) -> None:
    _entries.pop(digest, None)


def clear() -> None:
    with _lock:
        _entries.clear()


def _changed(**_kwargs) -> None:
    # Now, for this thread's next call, and again at commit: another thread may have refilled the cache from the
    # row as it was before the change committed.
    clear()
    transaction.on_commit(clear)


for _model in (ApiToken, get_user_model(), Group):
    post_save.connect(_changed, sender=_model, dispatch_uid=f"token_cache.save.{_model._meta.label}")
    post_delete.connect(_changed, sender=_model, dispatch_uid=f"token_cache.delete.{_model._meta.label}")
m2m_changed.connect(_changed, sender=get_user_model().groups.through, dispatch_uid="token_cache.groups")
