"""Beat tasks of the audit log."""

from celery import shared_task
from django.conf import settings

from audit.checkpoints import checkpoint_create, checkpoint_export


@shared_task(name="audit.checkpoint")
def checkpoint() -> int | None:
    """Sign the chain's head (every AUDIT_CHECKPOINT_SECONDS), then copy the new checkpoints to
    AUDIT_CHECKPOINT_EXPORT_DIR when it is set."""
    created = checkpoint_create()
    if settings.AUDIT_CHECKPOINT_EXPORT_DIR:
        checkpoint_export(settings.AUDIT_CHECKPOINT_EXPORT_DIR)
    return created.pk if created else None
