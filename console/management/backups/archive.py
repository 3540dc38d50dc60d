"""One backup directory: what it holds, how it is written, checked and restored.

    console-backup-<UTC time>/
      MANIFEST.json               sha256 and size of every part, console version, applied migrations, counts
      database.pgdump | database.sqlite3
      keys/                       DATA_DIR's generated keys (secret_key, secrets_key, audit_checkpoint_key)
      audit-checkpoints/          every signed checkpoint, as AUDIT_CHECKPOINT_EXPORT_DIR holds them
      model-store-manifests.json  each artifact's host, path and files_sha256 (the weights stay on their hosts)

The directory is written under a `.partial` name and renamed when complete, so a backup cut short never looks
like one. It holds the keys that decrypt the stored secrets: it is created readable by its owner only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from django.conf import settings
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder

import audit
from audit.checkpoints import EXPORT_NAME, checkpoint_create, checkpoint_export
from audit.models import AuditEvent
from console.management.backups import database
from deployments.models import ModelArtifact

FORMAT = "llmdeploy-console-backup-1"
MANIFEST = "MANIFEST.json"
KEYS_DIR = "keys"
CHECKPOINTS_DIR = "audit-checkpoints"
MODEL_MANIFESTS = "model-store-manifests.json"
# The files console/settings.py generates in DATA_DIR when the environment does not give the key.
KEY_FILES = {
    "secret_key": "SECRET_KEY",
    "secrets_key": "SECRETS_ENCRYPTION_KEYS",
    "audit_checkpoint_key": "AUDIT_CHECKPOINT_KEY",
}


class BackupError(Exception):
    pass


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def console_version() -> str:
    try:
        return metadata.version("llmdeploy-console")
    except metadata.PackageNotFoundError:
        return "unknown"


def applied_migrations() -> dict[str, list[str]]:
    applied: dict[str, list[str]] = {}
    for app, name in sorted(MigrationRecorder(connection).applied_migrations()):
        applied.setdefault(app, []).append(name)
    return applied


def _model_store_manifests() -> list[dict]:
    artifacts = ModelArtifact.objects.exclude(status=ModelArtifact.Status.DELETED).select_related("repo", "host")
    return [
        {
            "id": artifact.pk,
            "repo": artifact.repo.repo_id,
            "commit": artifact.repo.commit,
            "host": artifact.host.name,
            "path": artifact.path,
            "kind": artifact.kind,
            "status": artifact.status,
            "files_sha256": artifact.files_sha256,
        }
        for artifact in artifacts.order_by("pk")
    ]


def _write_private(path: Path, content: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)


def _audit_checkpoints(target: Path) -> int:
    """Sign the chain's head now, then copy the off-host exports and every stored checkpoint: taken before the
    database dump, so none vouches for an event the dump lacks."""
    checkpoint_create()
    target.mkdir(mode=0o700)
    exported = Path(settings.AUDIT_CHECKPOINT_EXPORT_DIR) if settings.AUDIT_CHECKPOINT_EXPORT_DIR else None
    if exported is not None and exported.is_dir():
        for path in sorted(exported.iterdir()):
            if EXPORT_NAME.fullmatch(path.name):
                shutil.copy2(path, target / path.name)
    checkpoint_export(target)
    return sum(1 for path in target.iterdir() if EXPORT_NAME.fullmatch(path.name))


def backup_create(*, output_dir: Path) -> Path:
    """Write a complete backup of this console under output_dir; returns its directory."""
    created = datetime.now(UTC)
    final = Path(output_dir) / f"console-backup-{created:%Y%m%dT%H%M%SZ}"
    if final.exists():
        raise BackupError(f"{final} exists already")
    partial = final.with_name(final.name + ".partial")
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(mode=0o700)
    try:
        audit.record(
            action="console.backup", actor=None, actor_name="system (manage.py backup)", detail={"path": str(final)}
        )
        checkpoints = _audit_checkpoints(partial / CHECKPOINTS_DIR)
        (partial / KEYS_DIR).mkdir(mode=0o700)
        keys = []
        for name in KEY_FILES:
            source = Path(settings.DATA_DIR) / name
            if source.is_file():
                _write_private(partial / KEYS_DIR / name, source.read_bytes())
                keys.append(name)
        manifests = _model_store_manifests()
        _write_private(partial / MODEL_MANIFESTS, json.dumps(manifests, indent=1, sort_keys=True).encode())
        head = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first()
        dump = database.database_dump(partial)
        files = {
            str(path.relative_to(partial)): {"sha256": sha256_file(path), "size": path.stat().st_size}
            for path in sorted(partial.rglob("*"))
            if path.is_file()
        }
        manifest = {
            "format": FORMAT,
            "created": created.isoformat(),
            "console_version": console_version(),
            "database": {"vendor": database.vendor(), "file": dump.name},
            "migrations": applied_migrations(),
            "keys": keys,
            "keys_in_environment": [variable for variable in KEY_FILES.values() if os.environ.get(variable)],
            "audit": {"head_event_id": head, "checkpoints": checkpoints},
            "artifacts": len(manifests),
            "files": files,
        }
        _write_private(partial / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
        partial.rename(final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return final


def backup_read(path: Path) -> dict:
    """The backup's MANIFEST, once every part it lists is there with its recorded sha256 and size."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupError(f"{path} holds no {MANIFEST}: not a backup, or one cut short") from None
    except ValueError as error:
        raise BackupError(f"{path / MANIFEST} is not valid JSON: {error}") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{path} is a backup of format {manifest.get('format')!r}; this console reads {FORMAT}")
    for relative, expected in manifest["files"].items():
        part = path / relative
        if not part.is_file():
            raise BackupError(f"{relative} is missing from {path}")
        if part.stat().st_size != expected["size"] or sha256_file(part) != expected["sha256"]:
            raise BackupError(f"{relative} in {path} does not match its sha256 in {MANIFEST} (damaged or altered)")
    return manifest


def unknown_migrations(manifest: dict) -> list[str]:
    """Migrations the backup's database has applied that this code does not hold (a newer console made it)."""
    known = set(MigrationLoader(None, ignore_no_migrations=True).disk_migrations)
    return [
        f"{app}.{name}" for app, names in manifest["migrations"].items() for name in names if (app, name) not in known
    ]


@dataclass
class RestoreResult:
    manifest: dict
    keys: list[str]
    replaced_keys: list[str] = field(default_factory=list)
    keys_to_set: list[str] = field(default_factory=list)


def _restore_keys(path: Path, manifest: dict, *, keep_replaced: bool) -> tuple[list[str], list[str]]:
    """Put the backup's key files into DATA_DIR. A different key already there is kept beside, renamed, where the
    database held data it may have encrypted (keep_replaced); over an empty database it protected nothing (this
    very process's settings may just have generated it)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    data_dir = Path(settings.DATA_DIR)
    data_dir.mkdir(parents=True, exist_ok=True)
    restored, replaced = [], []
    for name in manifest["keys"]:
        content = (path / KEYS_DIR / name).read_bytes()
        target = data_dir / name
        if target.exists():
            if target.read_bytes() == content:
                restored.append(name)
                continue
            if keep_replaced:
                kept = target.with_name(f"{name}.replaced-{stamp}")
                target.rename(kept)
                replaced.append(str(kept))
            else:
                target.unlink()
        _write_private(target, content)
        restored.append(name)
    return restored, replaced


def backup_restore(*, path: Path, force: bool = False) -> RestoreResult:
    """Check the backup, load its database into the configured (empty, unless force) database, put its keys into
    DATA_DIR, then migrate in a new process (which reads the restored keys) and record the restore."""
    path = Path(path).resolve()
    manifest = backup_read(path)
    if manifest["database"]["vendor"] != database.vendor():
        raise BackupError(
            f"the backup holds a {manifest['database']['vendor']} database; DATABASE_URL points at {database.vendor()}"
        )
    unknown = unknown_migrations(manifest)
    if unknown:
        raise BackupError(
            f"the backup was made by a newer console ({manifest['console_version']}): its database has "
            f"migrations this code lacks ({', '.join(unknown[:5])}). Restore with that version, then upgrade."
        )
    tables = database.database_tables()
    if tables and not force:
        raise BackupError(
            f"the database already holds {len(tables)} tables; restore into an empty database, "
            "or pass --force to drop what it holds"
        )
    database.database_load(path / manifest["database"]["file"], replace=bool(tables))
    keys, replaced = _restore_keys(path, manifest, keep_replaced=bool(tables))
    migrate = subprocess.run([sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "migrate", "--no-input"])
    if migrate.returncode != 0:
        raise BackupError(f"the database and keys are restored, but migrate failed (exit {migrate.returncode})")
    audit.record(
        action="console.restore",
        actor=None,
        actor_name="system (manage.py restore)",
        detail={"backup": str(path), "created": manifest["created"], "version": manifest["console_version"]},
    )
    to_set = [variable for variable in manifest.get("keys_in_environment", []) if not os.environ.get(variable)]
    return RestoreResult(manifest=manifest, keys=keys, replaced_keys=replaced, keys_to_set=to_set)
