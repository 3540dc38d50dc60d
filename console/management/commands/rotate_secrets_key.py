from django.core.management.base import BaseCommand

from console.accounts.services.credentials import secrets_pending_rotation, secrets_rotate


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored secret under the newest key of SECRETS_ENCRYPTION_KEYS. "
        "Put the new key first, run this, then remove the old keys."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--check", action="store_true", help="Only count secrets not yet under the newest key.")

    def handle(self, *args, check: bool = False, **options) -> None:
        if check:
            pending = secrets_pending_rotation()
            self.stdout.write(f"{pending} secret(s) not yet encrypted with the newest key")
            if pending:
                raise SystemExit(1)
            return
        counts = secrets_rotate(actor_name="system (manage.py rotate_secrets_key)")
        total = sum(counts.values())
        for label, count in counts.items():
            self.stdout.write(f"{label}: {count} re-encrypted")
        self.stdout.write(
            self.style.SUCCESS(
                f"{total} secret(s) now encrypted with the newest key; "
                "older keys can be removed from SECRETS_ENCRYPTION_KEYS."
            )
        )
