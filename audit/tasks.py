"""Beat tasks of the audit log."""

from celery import shared_task
from django.conf import settings

from audit.checkpoints import checkpoint_create, checkpoint_export
from audit.models import AuditCheckpoint
from audit.verify import remember, verify_chain, verify_from_checkpoint


@shared_task(name="audit.checkpoint")
def checkpoint() -> int | None:
    """Verify the events since the last checkpoint (the result is kept for /metrics), sign the chain's head (every
    AUDIT_CHECKPOINT_SECONDS), then copy the new checkpoints to AUDIT_CHECKPOINT_EXPORT_DIR when it is set."""
    last = AuditCheckpoint.objects.order_by("-id").first()
    remember(verify_from_checkpoint(last) if last is not None else verify_chain())
    created = checkpoint_create()
    if settings.AUDIT_CHECKPOINT_EXPORT_DIR:
        checkpoint_export(settings.AUDIT_CHECKPOINT_EXPORT_DIR)
    return created.pk if created else None
