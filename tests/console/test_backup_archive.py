"""A backup is checked before anything is restored: every part against its sha256 in MANIFEST.json, the database
kind against DATABASE_URL's, its migrations against this code's. The whole drill (backup, destroy, restore, use) is
tests/faults/test_restore_drill.py."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import pytest
from django.db import connection

from console.management.backups.archive import FORMAT, BackupError, backup_read, backup_restore, unknown_migrations
from deployments.monitoring import healthcheck


def _backup(tmp_path, **manifest_fields):
    """A backup directory holding a database file and one key, with a MANIFEST that lists them."""
    directory = tmp_path / "console-backup-20260101T000000Z"
    (directory / "keys").mkdir(parents=True)
    parts = {"database.sqlite3": b"database bytes", "keys/secrets_key": b"key bytes\n"}
    for name, content in parts.items():
        (directory / name).write_bytes(content)
    manifest = {
        "format": FORMAT,
        "created": "2026-01-01T00:00:00+00:00",
        "console_version": "0.1.0",
        "database": {"vendor": connection.vendor, "file": "database.sqlite3"},
        "migrations": {"audit": ["0001_events"]},
        "keys": ["secrets_key"],
        "files": {
            name: {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}
            for name, content in parts.items()
        },
        **manifest_fields,
    }
    (directory / "MANIFEST.json").write_text(json.dumps(manifest))
    return directory


def test_an_intact_backup_reads(tmp_path):
    assert backup_read(_backup(tmp_path))["keys"] == ["secrets_key"]


def test_an_altered_or_missing_part_is_refused(tmp_path):
    directory = _backup(tmp_path)
    (directory / "keys" / "secrets_key").write_bytes(b"key bytez\n")  # same size, other content
    with pytest.raises(BackupError, match=r"keys/secrets_key .* does not match its sha256"):
        backup_read(directory)
    (directory / "database.sqlite3").unlink()
    with pytest.raises(BackupError, match=r"database\.sqlite3 is missing"):
        backup_read(directory)


def test_a_directory_without_manifest_or_of_another_format_is_refused(tmp_path):
    with pytest.raises(BackupError, match=r"holds no MANIFEST\.json"):
        backup_read(tmp_path)
    with pytest.raises(BackupError, match="format 'something-else'"):
        backup_read(_backup(tmp_path, format="something-else"))


def test_a_backup_from_a_newer_console_is_refused_before_the_database_is_touched(tmp_path):
    newer = {"audit": ["0001_events", "9999_from_the_future"]}
    assert unknown_migrations({"migrations": newer}) == ["audit.9999_from_the_future"]
    # No database access is allowed in this test: the refusal comes before any.
    with pytest.raises(BackupError, match=r"newer console .*audit\.9999_from_the_future"):
        backup_restore(path=_backup(tmp_path, migrations=newer))


def test_a_backup_of_another_database_kind_is_refused(tmp_path):
    other = "sqlite" if connection.vendor == "postgresql" else "postgresql"
    with pytest.raises(BackupError, match=f"holds a {other} database"):
        backup_restore(path=_backup(tmp_path, database={"vendor": other, "file": "database.sqlite3"}))


def test_the_health_check_does_not_count_a_backup_cut_short(settings, tmp_path):
    """`manage.py backup` writes under `<name>.partial` and renames when complete: a leftover partial directory
    (the backup was killed) must not pass for a fresh backup."""
    settings.BACKUP_DIR = str(tmp_path)
    partial = tmp_path / "console-backup-20260101T000000Z.partial"
    partial.mkdir()
    (partial / "database.pgdump").write_bytes(b"half a dump")
    section, findings = healthcheck.backups_section(datetime.now(UTC))
    assert section["newest"] == "" and [finding["severity"] for finding in findings] == ["critical"]
    complete = tmp_path / "console-backup-20260101T000001Z"
    complete.mkdir()
    (complete / "MANIFEST.json").write_text("{}")
    section, findings = healthcheck.backups_section(datetime.now(UTC))
    assert section["newest"] == str(complete / "MANIFEST.json") and findings == []
