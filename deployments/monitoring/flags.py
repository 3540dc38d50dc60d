"""Deployment flags: what needs a person's attention while a deployment runs, beside its state (a GPU it holds
failed, its model files were found corrupt). One flag per (cause, subject); raising and clearing are audited."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from audit.recorder import record
from deployments.serving.models import Deployment

# States in which a deployment holds its GPUs and model files.
HOLDING = (
    Deployment.State.STARTING,
    Deployment.State.RUNNING,
    Deployment.State.DOWNLOADING,
    Deployment.State.PLACING,
    Deployment.State.STOPPING,
)


def _same(flag: dict, cause: str, subject: str) -> bool:
    return flag.get("cause") == cause and flag.get("subject") == subject


def raise_flag(deployment: Deployment, *, cause: str, subject: str, detail: str, next_step: str, actor=None) -> bool:
    """Flag the deployment (once per cause and subject); True when the flag is new."""
    with transaction.atomic():
        locked = Deployment.objects.select_for_update().get(pk=deployment.pk)
        flags = list(locked.flags or [])
        if any(_same(flag, cause, subject) for flag in flags):
            return False
        flag = {
            "cause": cause,
            "subject": subject,
            "detail": detail,
            "next_step": next_step,
            "at": timezone.now().isoformat(),
        }
        locked.flags = [*flags, flag]
        locked.save(update_fields=["flags"])
        record(action="deployment.flagged", actor=actor, target=locked, detail=flag)
    deployment.flags = locked.flags
    return True


def clear_flag(deployment: Deployment, *, cause: str, subject: str, actor=None) -> bool:
    """Remove the flag of this cause and subject; True when there was one."""
    with transaction.atomic():
        locked = Deployment.objects.select_for_update().get(pk=deployment.pk)
        flags = list(locked.flags or [])
        kept = [flag for flag in flags if not _same(flag, cause, subject)]
        if len(kept) == len(flags):
            return False
        locked.flags = kept
        locked.save(update_fields=["flags"])
        record(
            action="deployment.flag_cleared", actor=actor, target=locked, detail={"cause": cause, "subject": subject}
        )
    deployment.flags = locked.flags
    return True


def deployments_on_gpu(gpu) -> list[Deployment]:
    """Deployments holding this GPU now."""
    candidates = Deployment.objects.filter(host_id=gpu.host_id, state__in=HOLDING)
    return [deployment for deployment in candidates if gpu.index in (deployment.gpu_indexes or [])]


def deployments_using_artifact(artifact) -> list[Deployment]:
    """Deployments whose current version serves this artifact, or whose server runs from this copy of it."""
    by_spec = Deployment.objects.filter(spec__artifact=artifact)
    holders = set(artifact.uses.values_list("holder", flat=True))
    by_use = Deployment.objects.filter(pk__in=[int(h.split(":", 1)[1]) for h in holders if h.startswith("deployment:")])
    return list((by_spec | by_use).distinct())
