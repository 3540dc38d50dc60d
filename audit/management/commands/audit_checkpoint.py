import json

from django.core.management.base import BaseCommand

from audit.checkpoints import checkpoint_create
from audit.models import AuditCheckpoint


class Command(BaseCommand):
    help = "Sign the chain's current head now; with --export, print every checkpoint as JSON lines to keep off-host."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--export", action="store_true")

    def handle(self, *args, export: bool = False, **options) -> None:
        if export:
            for checkpoint in AuditCheckpoint.objects.order_by("id"):
                self.stdout.write(json.dumps(checkpoint.as_dict(), sort_keys=True))
            return
        checkpoint = checkpoint_create()
        self.stdout.write(
            f"checkpoint {checkpoint.id} at event {checkpoint.last_event_id}" if checkpoint else "nothing new to sign"
        )
