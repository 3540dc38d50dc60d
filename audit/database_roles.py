"""Two database identities on PostgreSQL: the owner, which migrate connects as (it owns the tables and the audit
guard's triggers), and the application role, which web, worker, beat and agents connect as. The application role
may read and write every table but may only INSERT and SELECT on the audit tables and the inference log; not
being the owner, it can neither drop nor disable the guard (docs/operations.md, "The audit log: database roles").

`migrate` calls ensure_app_role() after every run (audit/signals.py), so tables added by later migrations are
granted too; `manage.py audit_db_roles` does the same on demand.
"""

from __future__ import annotations

import re

from django.db import connections

from audit.guard import GUARDED_TABLES, present_tables

ROLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# What the application role may do on the audit tables: add and read, nothing else.
AUDIT_PRIVILEGES = "SELECT, INSERT"


class RoleSetupError(Exception):
    pass


def app_role_statements(role: str, database: str, guarded: tuple[str, ...] = GUARDED_TABLES) -> list[str]:
    """The grants, in order: everything on the application's tables, then the append-only tables (`guarded`: the
    audit tables and the inference log) narrowed to INSERT and SELECT, and Django's migration record read-only
    (only migrate applies migrations)."""
    if not ROLE_NAME.fullmatch(role):
        raise RoleSetupError(f"{role!r} is not a plain role name (lower-case letters, digits, _)")
    audit_tables = ", ".join(guarded)
    return [
        f'GRANT CONNECT, TEMPORARY ON DATABASE "{database}" TO {role}',
        f"GRANT USAGE ON SCHEMA public TO {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}",
        f"REVOKE ALL ON {audit_tables} FROM {role}",
        f"GRANT {AUDIT_PRIVILEGES} ON {audit_tables} TO {role}",
        f"REVOKE ALL ON django_migrations FROM {role}",
        f"GRANT SELECT ON django_migrations TO {role}",
    ]


def ensure_app_role(role: str, password: str, *, using: str = "default") -> list[str]:
    """Create the application role if it is missing (or reset its password), then grant what it may do.
    Run as the owning role. Returns the statements run (passwords left out)."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        raise RoleSetupError("separate database roles need PostgreSQL (SQLite has no roles)")
    if not password:
        raise RoleSetupError("the application role needs a password (DATABASE_APP_PASSWORD)")
    # Only the guarded tables that exist: a database migrated part way may not hold the inference log yet.
    statements = app_role_statements(role, connection.settings_dict["NAME"], present_tables(connection))
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user")
        if cursor.fetchone()[0] == role:
            raise RoleSetupError(f"run this as the owning role, not as {role} itself")
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
        verb = "ALTER" if cursor.fetchone() else "CREATE"
        # Client-side binding (Django's psycopg default) quotes the password as a literal here.
        cursor.execute(f"{verb} ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %s", [password])
        for statement in statements:
            cursor.execute(statement)
    return [f"{verb} ROLE {role} WITH LOGIN ...", *statements]
