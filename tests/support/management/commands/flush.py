"""Test suites only: Django's flush, able to empty the append-only audit tables.

flush wipes every table; on the audit tables the guard triggers refuse that. This command lifts
the guard for the flush and reinstalls it in the same transaction, which needs the right to drop
triggers (the owning role the tests connect as). Django's transactional tests call flush between tests,
so the suite keeps working with the guard on. It is registered by tests/conftest.py, never shipped as a
command an operator could run: in production `manage.py flush` is Django's own, which the guard refuses.
"""

from django.core.management.commands.flush import Command as FlushCommand
from django.db import connections, transaction

from audit import guard


class Command(FlushCommand):
    help = FlushCommand.help + " The audit guard is lifted for the flush and reinstalled after it."

    def handle(self, **options):
        database = options["database"]
        connection = connections[database]
        with transaction.atomic(using=database):
            guard.uninstall(connection)
            try:
                super().handle(**options)
            finally:
                guard.install(connection)
