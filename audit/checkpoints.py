"""Signed checkpoints of the chain's head, written periodically by beat and exportable off-host."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from django.db import transaction

from audit import chain
from audit.models import AuditCheckpoint, AuditEvent


@transaction.atomic
def checkpoint_create() -> AuditCheckpoint | None:
    """Sign the current head of the chain; None when the chain is empty or unchanged."""
    chain.lock_chain()
    head = AuditEvent.objects.order_by("-id").values_list("id", "hash").first()
    if head is None:
        return None
    last = AuditCheckpoint.objects.order_by("-id").first()
    if last is not None and last.last_event_id == head[0]:
        return None
    created_us = chain.database_now_us()
    count = AuditEvent.objects.count()
    signature = chain.checkpoint_signature(created_us=created_us, last_event_id=head[0], head_hash=head[1], count=count)
    return AuditCheckpoint.objects.create(
        created_us=created_us, last_event_id=head[0], head_hash=head[1], count=count, signature=signature
    )


EXPORT_NAME = re.compile(r"checkpoint-(\d{12})\.json")


def export_path(directory: Path, checkpoint_id: int) -> Path:
    return directory / f"checkpoint-{checkpoint_id:012d}.json"


def checkpoint_export(directory: str | Path) -> list[Path]:
    """Write every stored checkpoint not yet in `directory` as its own file, once: created exclusively and left
    read-only, never rewritten. The copies outlive the rows, so deleting checkpoints (and the events they vouch
    for) in the database is still detected (audit_verify --checkpoints DIR)."""
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    written = []
    for checkpoint in AuditCheckpoint.objects.order_by("id").iterator():
        path = export_path(directory, checkpoint.id)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(checkpoint.as_dict(), sort_keys=True) + "\n")
        written.append(path)
    return written


def exported_checkpoints(directory: str | Path) -> list[tuple[Path, dict]]:
    """The exported checkpoints in `directory`, oldest first (files of other names are ignored)."""
    found = []
    for path in sorted(Path(directory).iterdir()):
        if EXPORT_NAME.fullmatch(path.name):
            found.append((path, json.loads(path.read_text())))
    return found
