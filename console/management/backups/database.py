"""The database part of a backup: pg_dump's custom format on PostgreSQL, SQLite's online backup API on SQLite.

Both read a consistent snapshot while the console keeps running. The client programs get the connection settings
through libpq's environment (PGHOST, PGPASSWORD...), never on a command line other users can read.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

from django.db import connections

DUMP_NAMES = {"postgresql": "database.pgdump", "sqlite": "database.sqlite3"}


class DatabaseError(Exception):
    pass


def vendor(using: str = "default") -> str:
    return connections[using].vendor


def _libpq_env(using: str) -> dict[str, str]:
    settings = connections[using].settings_dict
    values = {
        "PGDATABASE": settings["NAME"],
        "PGHOST": settings.get("HOST") or "",
        "PGPORT": str(settings.get("PORT") or ""),
        "PGUSER": settings.get("USER") or "",
        "PGPASSWORD": settings.get("PASSWORD") or "",
        "PGSSLMODE": (settings.get("OPTIONS") or {}).get("sslmode", ""),
    }
    return {**os.environ, **{name: value for name, value in values.items() if value}}


def _run(command: list[str], using: str) -> None:
    try:
        done = subprocess.run(command, env=_libpq_env(using), capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise DatabaseError(f"{command[0]} is not installed (the PostgreSQL client programs are needed)") from None
    if done.returncode != 0:
        raise DatabaseError(f"{command[0]} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")


def database_dump(target: Path, using: str = "default") -> Path:
    """Write the database to target (a directory); returns the file written."""
    path = target / DUMP_NAMES[vendor(using)]
    if vendor(using) == "postgresql":
        _run(["pg_dump", "--format=custom", "--compress=6", f"--file={path}"], using)
    elif vendor(using) == "sqlite":
        source = sqlite3.connect(connections[using].settings_dict["NAME"])
        copy = sqlite3.connect(path)
        try:
            source.backup(copy)
        finally:
            copy.close()
            source.close()
    else:
        raise DatabaseError(f"backups of a {vendor(using)} database are not supported")
    path.chmod(0o600)
    return path


def database_tables(using: str = "default") -> list[str]:
    """The tables the database holds now (an empty list: a fresh database, safe to restore into)."""
    connection = connections[using]
    if connection.vendor == "sqlite" and not Path(connection.settings_dict["NAME"]).exists():
        return []
    with connection.cursor() as cursor:
        return connection.introspection.table_names(cursor)


def database_load(dump: Path, *, replace: bool, using: str = "default") -> None:
    """Load a dump written by database_dump into the configured database. With replace, whatever it holds is
    dropped first; without, the database must be empty (the caller checks)."""
    connection = connections[using]
    if connection.vendor == "postgresql":
        if replace:
            with connection.cursor() as cursor:
                cursor.execute("DROP SCHEMA public CASCADE")
                cursor.execute("CREATE SCHEMA public")
        connection.close()
        # Ownership and grants are not restored: the restoring role (the owner, as for migrate) owns everything, and
        # the migrate that follows grants the application role what it may do (audit/database_roles.py).
        command = ["pg_restore", "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction"]
        _run([*command, f"--dbname={connection.settings_dict['NAME']}", str(dump)], using)
    elif connection.vendor == "sqlite":
        connection.close()
        name = Path(connection.settings_dict["NAME"])
        name.parent.mkdir(parents=True, exist_ok=True)
        source, target = sqlite3.connect(dump), sqlite3.connect(name)
        try:
            source.backup(target)  # replaces every page of the target, whatever it held
        finally:
            target.close()
            source.close()
    else:
        raise DatabaseError(f"restores into a {connection.vendor} database are not supported")
