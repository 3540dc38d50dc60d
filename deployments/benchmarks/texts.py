"""Sentences the benchmark work stores (a scheduled run's or a re-run's note, a schedule's last error, why a re-run
was given up, a suggestion's title), kept in English in the database (they are also audit data, and the worker
writes most of them) and shown in the reader's language: the *_display() helpers find which sentence a stored text
is and translate it, keeping its variable parts. A text no pattern knows (a user's own note) is shown as stored.
As deployments/inventory/notes.py does for a host's GPU note (issue 13 item 11)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from django.utils.translation import gettext, gettext_noop

# -- a run's note -------------------------------------------------------------------------------------------------
SCHEDULED_RUN = gettext_noop("Scheduled run (schedule %(id)d)")
RERUN_AFTER = gettext_noop("Re-run after: %(title)s")

# -- a schedule's last error ---------------------------------------------------------------------------------------
OWNER_DELETED = gettext_noop("Disabled: the user it ran as was deleted.")
OWNER_DEACTIVATED = gettext_noop("Disabled: %(user)s, whom it ran as, was deactivated.")
OWNER_NOT_ALLOWED = gettext_noop("Disabled: %(user)s, whom it ran as, may no longer use this deployment.")
ACCESS_LOST = gettext_noop("Disabled: the user it ran as may no longer use this deployment.")
SKIPPED_DOWN = gettext_noop("Skipped at %(when)s: the deployment was %(state)s, not running.")
SKIPPED_BUSY = gettext_noop("Skipped at %(when)s: the previous run of this schedule was still going.")
NOT_STARTED = gettext_noop("Not started at %(when)s: %(error)s")

# -- why a re-run was given up -------------------------------------------------------------------------------------
NOTHING_AWAITED = gettext_noop("This re-run waits for no version of the deployment.")
DEPLOYMENT_DOWN = gettext_noop("%(name)s is %(state)s and not restarting: the re-run cannot measure the new version.")
RERUN_TIMEOUT = gettext_noop("%(name)s did not run version %(version)s within %(minutes)s minutes.")
APPROVAL_LAPSED = gettext_noop("Approval request #%(id)s lapsed.")
APPROVAL_REJECTED = gettext_noop("Approval request #%(id)s was rejected: %(comment)s")
APPROVAL_UNANSWERED = gettext_noop("Approval request #%(id)s lapsed unanswered.%(comment)s")
APPROVAL_FAILED = gettext_noop("Approval request #%(id)s could not be applied: %(comment)s")
APPLIER_NOT_ALLOWED = gettext_noop("Whoever applied the suggestion may no longer use %(name)s.")

# -- a suggestion's title (the sentences suggestions.py builds them from) ------------------------------------------
TITLES = (
    gettext_noop("Give the KV cache more GPU memory (%(field)s %(old)s → %(new)s)"),
    gettext_noop("Run more sequences per batch (max_num_seqs %(old)s → %(new)s)"),
    gettext_noop("Store the KV cache in fp8 (kv_cache_dtype %(new)s)"),
    gettext_noop("Prefill more prompt tokens per batch (%(field)s %(old)s → %(new)s)"),
    gettext_noop("Shard over %(new)s GPUs (num_shard %(old)s → %(new)s)"),
    gettext_noop("Accept longer requests (%(change)s)"),
    gettext_noop("Admit more requests at once (max_concurrent_requests %(old)s → %(new)s)"),
)

_PARAM = re.compile(r"%\((\w+)\)([sd])|%%")


def _pattern(msgid: str) -> re.Pattern[str]:
    """The regular expression a sentence built from msgid matches; each %(name)s is a group (named once)."""
    parts, seen, end = [], set(), 0
    for found in _PARAM.finditer(msgid):
        parts.append(re.escape(msgid[end : found.start()]))
        end = found.end()
        name, kind = found.group(1), found.group(2)
        if name is None:
            parts.append("%")
        elif name in seen:
            parts.append(f"(?P={name})")
        else:
            seen.add(name)
            parts.append(f"(?P<{name}>-?\\d+)" if kind == "d" else f"(?P<{name}>.*?)")
    parts.append(re.escape(msgid[end:]))
    return re.compile("".join(parts), re.S)


def _params(msgid: str, groups: dict[str, str]) -> dict[str, object]:
    numbers = {name for name, kind in _PARAM.findall(msgid) if kind == "d"}
    return {name: int(value) if name in numbers else value for name, value in groups.items()}


Shown = Callable[[str], str]


def _translator(msgids: Iterable[str], parts: dict[str, Shown] | None = None, otherwise: Shown | None = None) -> Shown:
    """A display helper: the stored text in the active language, each variable part shown by parts[name] if
    given (a nested sentence), else as stored; a text no msgid matches through otherwise, else as stored."""
    table = [(msgid, _pattern(msgid)) for msgid in msgids]
    parts = parts or {}

    def display(text: str) -> str:
        if not text:
            return text
        for msgid, pattern in table:
            if found := pattern.fullmatch(text):
                params = _params(msgid, found.groupdict())
                for name, shown in parts.items():
                    if name in params:
                        params[name] = shown(str(params[name]))
                return gettext(msgid) % params
        return otherwise(text) if otherwise else text

    return display


def _words(text: str) -> str:
    """A nested sentence or word without parameters (a deployment's state, a refusal's message): translated when
    the catalogue knows it as it is."""
    return gettext(text) if text else text


suggestion_title_display: Shown = _translator(TITLES)
run_note_display: Shown = _translator((SCHEDULED_RUN, RERUN_AFTER), {"title": suggestion_title_display})
schedule_error_display: Shown = _translator(
    (OWNER_DELETED, OWNER_DEACTIVATED, OWNER_NOT_ALLOWED, ACCESS_LOST, SKIPPED_DOWN, SKIPPED_BUSY, NOT_STARTED),
    {"state": _words, "error": _words},
)
rerun_failure_display: Shown = _translator(
    (
        NOTHING_AWAITED,
        DEPLOYMENT_DOWN,
        RERUN_TIMEOUT,
        APPROVAL_LAPSED,
        APPROVAL_REJECTED,
        APPROVAL_UNANSWERED,
        APPROVAL_FAILED,
        APPLIER_NOT_ALLOWED,
    ),
    {"state": _words},
    otherwise=_words,  # a refused start's message, stored as the service said it
)
