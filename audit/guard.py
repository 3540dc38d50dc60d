"""The database guard: triggers that refuse UPDATE and DELETE (and TRUNCATE on PostgreSQL) on the
audit tables, for every role including the owner. Only uninstall() lifts it, which needs the
right to drop triggers (the owning role; never the application role in production)."""

from __future__ import annotations

GUARDED_TABLES = ("audit_auditevent", "audit_auditcheckpoint")
MESSAGE = "audit records are append-only"


def _postgresql_install(table: str) -> list[str]:
    return [
        f"""CREATE OR REPLACE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION '{MESSAGE} (% on %)', TG_OP, TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
            END $$""",
        f"DROP TRIGGER IF EXISTS {table}_no_change ON {table}",
        f"CREATE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION audit_refuse_change()",
        f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}",
        f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change()",
    ]


def _sqlite_install(table: str) -> list[str]:
    return [
        f"DROP TRIGGER IF EXISTS {table}_no_update",
        f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END",
        f"DROP TRIGGER IF EXISTS {table}_no_delete",
        f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END",
    ]


def install_statements(vendor: str) -> list[str]:
    build = _postgresql_install if vendor == "postgresql" else _sqlite_install
    return [statement for table in GUARDED_TABLES for statement in build(table)]


def uninstall_statements(vendor: str) -> list[str]:
    if vendor == "postgresql":
        return [
            f"DROP TRIGGER IF EXISTS {table}_{kind} ON {table}"
            for table in GUARDED_TABLES
            for kind in ("no_change", "no_truncate")
        ]
    return [f"DROP TRIGGER IF EXISTS {table}_{kind}" for table in GUARDED_TABLES for kind in ("no_update", "no_delete")]


def install(connection) -> None:
    with connection.cursor() as cursor:
        for statement in install_statements(connection.vendor):
            cursor.execute(statement)


def uninstall(connection) -> None:
    with connection.cursor() as cursor:
        for statement in uninstall_statements(connection.vendor):
            cursor.execute(statement)


def installed(connection) -> bool:
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT count(*) FROM pg_trigger WHERE tgname LIKE %s AND NOT tgisinternal", ["audit_%_no_%"]
            )
        else:
            cursor.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'audit_%_no_%'")
        return cursor.fetchone()[0] >= 2 * len(GUARDED_TABLES)
