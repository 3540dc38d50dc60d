from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from console.management.backups.archive import BackupError, backup_create
from console.management.backups.database import DatabaseError


class Command(BaseCommand):
    help = (
        "Back up this console while it runs: the database (pg_dump, or SQLite's online backup), DATA_DIR's keys, "
        "the audit checkpoints and the model stores' manifests, into one directory under BACKUP_DIR."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--output-dir", type=Path, help="Where to write the backup (default: BACKUP_DIR).")

    def handle(self, *args, output_dir: Path | None = None, **options) -> None:
        output_dir = output_dir or (Path(settings.BACKUP_DIR) if settings.BACKUP_DIR else None)
        if output_dir is None:
            raise CommandError("Set BACKUP_DIR (or pass --output-dir) to say where backups go.")
        try:
            path = backup_create(output_dir=output_dir)
        except (BackupError, DatabaseError) as error:
            raise CommandError(str(error)) from None
        self.stdout.write(self.style.SUCCESS(f"Backup written to {path}"))
        self.stdout.write(
            "It holds the keys that decrypt the stored secrets: keep it where only the console's operators can "
            "read it, and copy it off this machine."
        )
