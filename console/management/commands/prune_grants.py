from django.core.management.base import BaseCommand

from console.grant_cleanup import prune_stale_grants


class Command(BaseCommand):
    help = (
        "Delete per-object grants whose object no longer exists (left by deletes before the console dropped them "
        "with the object, or by raw SQL). Safe to run any time."
    )

    def handle(self, *args, **options) -> None:
        removed = prune_stale_grants()
        self.stdout.write(self.style.SUCCESS(f"{removed} stale grants removed"))
