"""Checkpoint tiers on the host that trains (the seed's storage advice): the newest CHECKPOINT_KEEP_FAST stay where the
program wrote them (CHECKPOINT_DIR, fast disk); older ones move to CHECKPOINT_ARCHIVE_DIR (another disk) after
their manifest verifies; beyond CHECKPOINT_RETAIN in all, the oldest are deleted. The rows say where each one is.

The newest checkpoint is always on the fast tier, which is where the program looks when it resumes ("latest").
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils import timezone

from deployments.models import Checkpoint, Job
from workers.jobs.manifest import verify_manifest


def _size(directory: Path) -> tuple[int, int]:
    files = [path for path in directory.rglob("*") if path.is_file()]
    return sum(path.stat().st_size for path in files), len(files)


def archive_dir(job: Job) -> Path:
    return Path(settings.CHECKPOINT_ARCHIVE_DIR) / f"finetune-{job.pk}"


def checkpoint_recorded(job: Job, event: dict[str, Any]) -> Checkpoint:
    """A checkpoint event → its row (once per step; a resumed run that saves the same step again updates it)."""
    path = Path(event["path"])
    size, files = _size(path) if path.is_dir() else (0, 0)
    metrics = (event.get("manifest") or {}).get("metrics") or {}
    checkpoint, _created = Checkpoint.objects.update_or_create(
        job=job,
        step=int(event["step"]),
        defaults={"path": str(path), "tier": Checkpoint.Tier.FAST, "size": size, "files": files, "metrics": metrics},
    )
    return checkpoint


def apply_tiers(job: Job, log=None) -> dict[str, list[int]]:
    """Move and delete what the tier settings say; returns the steps moved, deleted and refused (a checkpoint whose
    manifest does not verify stays where it is, and the log says why)."""
    log = log or (lambda text: None)
    done: dict[str, list[int]] = {"archived": [], "deleted": [], "refused": []}
    kept = list(Checkpoint.objects.filter(job=job).exclude(tier=Checkpoint.Tier.DELETED).order_by("-step"))
    keep_fast, retain = max(settings.CHECKPOINT_KEEP_FAST, 1), max(settings.CHECKPOINT_RETAIN, 1)
    for position, checkpoint in enumerate(kept):
        source = Path(checkpoint.path)
        if position >= retain:
            shutil.rmtree(source, ignore_errors=True)
            checkpoint.tier, checkpoint.moved_at = Checkpoint.Tier.DELETED, timezone.now()
            checkpoint.save(update_fields=["tier", "moved_at"])
            done["deleted"].append(checkpoint.step)
            log(f"checkpoint {checkpoint.step}: deleted (beyond the {retain} kept)")
        elif position >= keep_fast and checkpoint.tier == Checkpoint.Tier.FAST:
            problems = verify_manifest(source)
            if problems:
                done["refused"].append(checkpoint.step)
                log(f"checkpoint {checkpoint.step} stays on the fast disk: its manifest fails ({problems[0]})")
                continue
            target = archive_dir(job) / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(target, ignore_errors=True)
            partial = target.with_name(target.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(source, partial)  # another disk: copy, verify, then rename and delete the original
            problems = verify_manifest(partial)
            if problems:
                shutil.rmtree(partial, ignore_errors=True)
                done["refused"].append(checkpoint.step)
                log(f"checkpoint {checkpoint.step}: the archived copy does not verify ({problems[0]}); kept in place")
                continue
            partial.rename(target)
            shutil.rmtree(source, ignore_errors=True)
            checkpoint.path, checkpoint.tier, checkpoint.moved_at = str(target), Checkpoint.Tier.ARCHIVE, timezone.now()
            checkpoint.save(update_fields=["path", "tier", "moved_at"])
            done["archived"].append(checkpoint.step)
            log(f"checkpoint {checkpoint.step}: moved to the archive ({target})")
    return done
