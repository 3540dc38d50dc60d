"""Tampering with the audit tables as a database superuser could, to show the verifier notices."""

from __future__ import annotations

from django.db import connection

from audit import guard


class Tamper:
    """Bypass the append-only guard for the block (PostgreSQL: disable the user triggers; SQLite:
    drop them), then restore it."""

    def __enter__(self):
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER USER")
        else:
            guard.uninstall(connection)
        return self

    def sql(self, statement: str, params=()):
        with connection.cursor() as cursor:
            cursor.execute(statement, params)

    def __exit__(self, *exc):
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER USER")
        else:
            guard.install(connection)
