from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from console.management.backups.archive import CHECKPOINTS_DIR, MODEL_MANIFESTS, BackupError, backup_restore
from console.management.backups.database import DatabaseError


class Command(BaseCommand):
    help = (
        "Restore a backup written by `manage.py backup` into the configured database and DATA_DIR: checks every "
        "part's sha256, refuses a database that holds tables (unless --force), loads it, puts the keys back, "
        "migrates. Stop the console's processes first."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("backup", type=Path, help="The backup's directory (console-backup-<time>).")
        parser.add_argument(
            "--force", action="store_true", help="Drop whatever the database holds and restore over it."
        )

    def handle(self, *args, backup: Path, force: bool = False, **options) -> None:
        try:
            result = backup_restore(path=backup, force=force)
        except (BackupError, DatabaseError) as error:
            raise CommandError(str(error)) from None
        manifest, say = result.manifest, self.stdout.write
        say(
            self.style.SUCCESS(
                f"Restored the backup of {manifest['created']} (console {manifest['console_version']}): "
                f"{manifest['database']['vendor']} database, keys {', '.join(result.keys) or 'none'}."
            )
        )
        for kept in result.replaced_keys:
            say(f"A different key was in DATA_DIR; it is kept as {kept}.")
        say("Next steps:")
        for variable in result.keys_to_set:
            say(f"  - The backup's console took {variable} from its environment: set the same value here.")
        say(f"  - Check the audit log: manage.py audit_verify --checkpoints {backup.resolve() / CHECKPOINTS_DIR}")
        say(
            "  - Start the console. The reconciler marks deployments whose servers are gone as failed and "
            "restarts them by their policy; check the Deployments page."
        )
        say(
            "  - Run the health check with the integrity sweep: it re-hashes every ready artifact on its host "
            f"against files_sha256 (kept in {MODEL_MANIFESTS} too)."
        )
        say("  - Events recorded after the backup are not in it; newer off-host checkpoints will say so.")
