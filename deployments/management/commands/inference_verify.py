"""`manage.py inference_verify`: the inference log against its seals (deployments/gateway/verify.py); the sibling of
`audit_verify`, which proves the audit chain that holds the seals."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandParser

from deployments.gateway.verify import verify_inference_log


def _queued() -> int | None:
    # Best effort: the check itself needs only the database.
    try:
        from deployments.gateway.records import pending

        return pending()
    except Exception:
        return None


class Command(BaseCommand):
    help = (
        "Check every sealed inference batch against its digest and its audit event, and every inference record "
        "against the hash its batch holds: print 'N inference records in M sealed batches valid', or each broken "
        "record by batch, position, record id and request id (exit status 1). Run audit_verify for the chain itself."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--limit", type=int, default=20, help="Name at most this many problems (default 20); 1: the first only."
        )

    def handle(self, *args, limit: int = 20, **options) -> None:
        result = verify_inference_log(limit=limit)
        if not result.ok:
            self.stdout.write(self.style.ERROR(result.summary()))
            for problem in result.problems:
                self.stdout.write(f"  {problem.describe()}")
            raise SystemExit(1)
        queued = _queued()
        waiting = f" ({queued} queued in Redis, not sealed yet)" if queued else ""
        self.stdout.write(self.style.SUCCESS(result.summary() + waiting))
