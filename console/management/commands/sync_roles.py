from django.core.management.base import BaseCommand

from console.role_sync import sync_roles


class Command(BaseCommand):
    help = "Create or repair the role groups (admin, engineer, auditor) and their permissions."

    def handle(self, *args, **options) -> None:
        for role, actions in sync_roles().items():
            self.stdout.write(f"{role}: {', '.join(actions)}")
