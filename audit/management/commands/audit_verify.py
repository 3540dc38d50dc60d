import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from audit.incremental import remember_walk
from audit.models import AuditCheckpoint
from audit.verify import verify_chain, verify_checkpoints, verify_exported, verify_from_checkpoint


class Command(BaseCommand):
    help = (
        "Walk the audit chain and print 'N/N events valid', or the position and id of the first broken "
        "link (exit status 1). Also checks every stored signed checkpoint against the chain."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--from-checkpoint", type=int, help="Start at this stored checkpoint's head.")
        parser.add_argument(
            "--checkpoint-file",
            type=Path,
            help="Start at the last checkpoint of an exported JSON-lines file (an off-host copy).",
        )
        parser.add_argument(
            "--checkpoints",
            type=Path,
            metavar="DIR",
            help="Also check the chain against every checkpoint exported to DIR (AUDIT_CHECKPOINT_EXPORT_DIR): "
            "deleting the newest events is detected even when the checkpoint rows were deleted too.",
        )

    def handle(self, *args, from_checkpoint=None, checkpoint_file=None, checkpoints=None, **options) -> None:
        if checkpoint_file:
            lines = [line for line in checkpoint_file.read_text().splitlines() if line.strip()]
            if not lines:
                raise CommandError(f"{checkpoint_file} holds no checkpoint")
            result = verify_from_checkpoint(json.loads(lines[-1]))
        elif from_checkpoint:
            try:
                result = verify_from_checkpoint(AuditCheckpoint.objects.get(pk=from_checkpoint))
            except AuditCheckpoint.DoesNotExist:
                raise CommandError(f"no checkpoint {from_checkpoint}") from None
        else:
            result = remember_walk(verify_chain(), source="audit_verify")  # the audit page names its last run
        checkpoint_problem = None if (checkpoint_file or from_checkpoint) else verify_checkpoints()
        if checkpoints is not None and checkpoint_problem is None:
            if not checkpoints.is_dir():
                raise CommandError(f"{checkpoints} is not a directory")
            checkpoint_problem = verify_exported(checkpoints)
        if not result.ok:
            self.stdout.write(self.style.ERROR(result.summary()))
            raise SystemExit(1)
        if checkpoint_problem:
            self.stdout.write(self.style.ERROR(f"{result.summary()}, but {checkpoint_problem}"))
            raise SystemExit(1)
        self.stdout.write(self.style.SUCCESS(result.summary()))
