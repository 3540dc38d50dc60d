"""What an agent says about its host's GPUs, kept in English in the database (it is also audit data) and shown in
the reader's language: the agent writes these sentences, host_note_display() translates them."""

from __future__ import annotations

import re

from django.utils.translation import gettext, gettext_noop

NVML_UNAVAILABLE = gettext_noop("NVML is not available on this host (%(detail)s); no GPU registered")
NO_GPU_FOUND = gettext_noop("NVML found no GPU on this host")
_UNAVAILABLE = re.compile(r"NVML is not available on this host \((?P<detail>.*)\); no GPU registered", re.S)


def nvml_unavailable(detail: str) -> str:
    return NVML_UNAVAILABLE % {"detail": detail}


def host_note_display(note: str) -> str:
    """The stored note in the active language (the library's own detail stays as it said it)."""
    if note == NO_GPU_FOUND:
        return gettext(NO_GPU_FOUND)
    if match := _UNAVAILABLE.fullmatch(note):
        return gettext(NVML_UNAVAILABLE) % {"detail": match["detail"]}
    return note
