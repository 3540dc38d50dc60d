"""Beat tasks of the audit log."""

import logging

from celery import shared_task
from django.conf import settings

from audit.checkpoints import checkpoint_create, checkpoint_export
from audit.incremental import remember_walk
from audit.models import AuditCheckpoint
from audit.verify import verify_chain, verify_from_checkpoint

logger = logging.getLogger(__name__)


@shared_task(name="audit.checkpoint")
def checkpoint() -> int | None:
    """Verify the events since the last checkpoint (the result is kept for /metrics), sign the chain's head (every
    AUDIT_CHECKPOINT_SECONDS), then copy the new checkpoints to AUDIT_CHECKPOINT_EXPORT_DIR when it is set.

    A chain that does not verify is not signed: a new checkpoint would vouch for the edited events, and the next run,
    verifying only after it, would report the chain sound again. Signing resumes once the chain verifies (restored)."""
    last = AuditCheckpoint.objects.order_by("-id").first()
    result = remember_walk(verify_from_checkpoint(last) if last is not None else verify_chain(), source="periodic")
    if not result.ok:
        logger.error("audit: not signing a checkpoint: %s", result.summary())
        return None
    created = checkpoint_create()
    if settings.AUDIT_CHECKPOINT_EXPORT_DIR:
        checkpoint_export(settings.AUDIT_CHECKPOINT_EXPORT_DIR)
    return created.pk if created else None
