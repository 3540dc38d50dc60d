from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from audit.database_roles import RoleSetupError, ensure_app_role


class Command(BaseCommand):
    help = (
        "Create or update the application's database role (DATABASE_APP_USER, DATABASE_APP_PASSWORD): every "
        "table read and written, the audit tables INSERT and SELECT only. Run as the owning role; migrate runs it."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--role", default=None, help="Role name (default: DATABASE_APP_USER).")

    def handle(self, *args, role=None, verbosity: int = 1, **options) -> None:
        role = role or settings.DATABASE_APP_USER
        try:
            statements = ensure_app_role(role, settings.DATABASE_APP_PASSWORD)
        except RoleSetupError as exc:
            raise CommandError(str(exc)) from exc
        if verbosity < 1:
            return
        for statement in statements:
            self.stdout.write(statement)
        self.stdout.write(self.style.SUCCESS(f"{role}: audit tables INSERT and SELECT only"))
