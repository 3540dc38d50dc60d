"""Beat tasks of the audit log."""

from celery import shared_task

from audit.checkpoints import checkpoint_create


@shared_task(name="audit.checkpoint")
def checkpoint() -> int | None:
    """Sign the chain's head (every AUDIT_CHECKPOINT_SECONDS)."""
    created = checkpoint_create()
    return created.pk if created else None
