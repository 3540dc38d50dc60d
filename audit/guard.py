"""The database guard: triggers that refuse UPDATE and DELETE (and TRUNCATE on PostgreSQL) on the
audit tables, for every role including the owner. Only uninstall() lifts it, which needs the
right to drop triggers (the owning role; never the application role in production).

The inference log (the gateway's records and their sealed batches) is append-only the same way. Its tables belong
to the deployments app, so they are named here as strings only (the audit package imports nothing of deployments)
and a deployments migration installs their triggers once the tables exist. install(), uninstall() and installed()
without `tables` act on every guarded table the database holds."""

from __future__ import annotations

AUDIT_TABLES = ("audit_auditevent", "audit_auditcheckpoint")
INFERENCE_TABLES = ("deployments_inferencerecord", "deployments_inferencebatch")
GUARDED_TABLES = AUDIT_TABLES + INFERENCE_TABLES
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


def _trigger_kinds(vendor: str) -> tuple[str, str]:
    return ("no_change", "no_truncate") if vendor == "postgresql" else ("no_update", "no_delete")


def install_statements(vendor: str, tables: tuple[str, ...] = GUARDED_TABLES) -> list[str]:
    build = _postgresql_install if vendor == "postgresql" else _sqlite_install
    return [statement for table in tables for statement in build(table)]


def uninstall_statements(vendor: str, tables: tuple[str, ...] = GUARDED_TABLES) -> list[str]:
    on = (lambda table: f" ON {table}") if vendor == "postgresql" else (lambda table: "")
    return [f"DROP TRIGGER IF EXISTS {table}_{kind}{on(table)}" for table in tables for kind in _trigger_kinds(vendor)]


def present_tables(connection) -> tuple[str, ...]:
    """The guarded tables this database holds (the inference log's exist once the deployments app migrated)."""
    existing = set(connection.introspection.table_names())
    return tuple(table for table in GUARDED_TABLES if table in existing)


def install(connection, tables: tuple[str, ...] | None = None) -> None:
    with connection.cursor() as cursor:
        for statement in install_statements(
            connection.vendor, present_tables(connection) if tables is None else tables
        ):
            cursor.execute(statement)


def uninstall(connection, tables: tuple[str, ...] | None = None) -> None:
    chosen = present_tables(connection) if tables is None else tables
    with connection.cursor() as cursor:
        for statement in uninstall_statements(connection.vendor, chosen):
            cursor.execute(statement)


def installed(connection) -> bool:
    """True when every guarded table the database holds has its triggers, enabled."""
    expected = {f"{table}_{kind}" for table in present_tables(connection) for kind in _trigger_kinds(connection.vendor)}
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # tgenabled 'D': switched off by ALTER TABLE ... DISABLE TRIGGER, which an owner could do.
            cursor.execute("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgenabled <> 'D'")
        else:
            cursor.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        found = {row[0] for row in cursor.fetchall()}
    return bool(expected) and expected <= found
