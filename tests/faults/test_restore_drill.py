"""Restore drill: back up a console at work, destroy its database and DATA_DIR, restore into new ones, and show
that what a user relies on came back: logins, stored secrets, the audit log against its exported checkpoints,
deployments the reconciler can reason about, artifacts whose files still match their hashes.

Every step is its own process (`manage.py backup`, `manage.py restore`, `manage.py audit_verify`, and
tests/faults/restore_drill_console.py for what happens inside the console), each with the drill's own DATA_DIR and
database: a scratch PostgreSQL database beside DATABASE_URL's, and SQLite under DATA_DIR. The model store lives
outside DATA_DIR, as on a GPU host: the weights are not in the backup, their hashes are.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dj_database_url
import psycopg
import pytest

from tests.conftest import need
from tests.faults import harness

ROOT = Path(__file__).resolve().parents[2]
MANAGE = [sys.executable, str(ROOT / "manage.py")]
DRILL = [sys.executable, "-m", "tests.faults.restore_drill_console"]
# The drill's console takes its keys from its own DATA_DIR, its metrics directory too.
DROPPED_ENV = ("SECRET_KEY", "SECRETS_ENCRYPTION_KEYS", "AUDIT_CHECKPOINT_KEY", "PROMETHEUS_MULTIPROC_DIR")


class ScratchPostgres:
    """Databases created for the drill on DATABASE_URL's server, dropped at the end."""

    def __init__(self, url: str) -> None:
        self.params = dj_database_url.parse(url)
        self.names: list[str] = []

    def _admin(self) -> psycopg.Connection:
        params = self.params
        return psycopg.connect(
            dbname="postgres",
            host=params["HOST"] or "127.0.0.1",
            port=params["PORT"] or 5432,
            user=params["USER"] or None,
            password=params["PASSWORD"] or None,
            autocommit=True,
        )

    def create(self, suffix: str) -> str:
        name = f"{self.params['NAME']}_drill_{os.getpid()}_{suffix}"
        with self._admin() as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            connection.execute(f'CREATE DATABASE "{name}"')
        self.names.append(name)
        return self.url(name)

    def drop(self, url: str) -> None:
        with self._admin() as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{dj_database_url.parse(url)["NAME"]}" WITH (FORCE)')

    def url(self, name: str) -> str:
        params = self.params
        password = f":{params['PASSWORD']}" if params["PASSWORD"] else ""
        return f"postgres://{params['USER']}{password}@{params['HOST'] or '127.0.0.1'}:{params['PORT'] or 5432}/{name}"

    def drop_all(self) -> None:
        for name in self.names:
            self.drop(self.url(name))


def _env(base: Path, data_dir: Path, database_url: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in DROPPED_ENV}
    env.update(
        DJANGO_SETTINGS_MODULE="console.settings",
        DATA_DIR=str(data_dir),
        DATABASE_URL=database_url,  # empty: SQLite under DATA_DIR
        MODEL_STORE=str(base / "store"),
        AUDIT_CHECKPOINT_EXPORT_DIR=str(base / "exported"),
        BACKUP_DIR=str(base / "backups"),
        ALLOWED_HOSTS="testserver",
        PYTHONPATH=str(ROOT),
    )
    return env


STEP_SECONDS: list[tuple[str, float]] = []  # each step's wall time in this trial, for its record


def _run(command: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    started = time.monotonic()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    words = command[3:5] if command[1] == "-m" else command[2:4]  # "backup", "restore --force", "check"...
    STEP_SECONDS.append(
        (" ".join(word for word in words if not word.startswith("/")), round(time.monotonic() - started, 1))
    )
    return done


def _ok(done: subprocess.CompletedProcess, what: str) -> str:
    assert done.returncode == 0, f"{what} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _back_up_a_console_at_work(env: dict[str, str], base: Path) -> tuple[Path, dict]:
    """Populate a console, then back it up while it keeps recording audit events."""
    facts_path = base / "facts.json"
    console = subprocess.Popen([*DRILL, "populate", str(facts_path)], env=env, cwd=ROOT, stderr=subprocess.PIPE)
    try:
        ready = harness.wait_until(lambda: facts_path.exists() or console.poll() is not None, timeout=60)
        assert ready is not None and console.poll() is None, f"populate failed: {console.stderr.read().decode()}"
        STEP_SECONDS.append(("populate", round(ready, 1)))
        time.sleep(harness.random_delay(0.05, 0.5))  # a few events of work before the backup starts
        out = _ok(_run([*MANAGE, "backup"], env), "manage.py backup")
    finally:
        facts_path.with_name(facts_path.name + ".stop").touch()
        console.wait(timeout=30)
    backups = sorted((base / "backups").glob("console-backup-*"))
    assert len(backups) == 1 and str(backups[0]) in out, out
    return backups[0], json.loads(facts_path.read_text())


def _drill(base: Path, vendor: str, postgres: ScratchPostgres | None) -> harness.Trial:
    STEP_SECONDS.clear()
    first_url = postgres.create("live") if postgres else ""
    live = _env(base, base / "data-live", first_url)
    backup, facts = _back_up_a_console_at_work(live, base)
    manifest = json.loads((backup / "MANIFEST.json").read_text())
    assert manifest["database"]["vendor"] == vendor
    assert set(manifest["keys"]) == {"secret_key", "secrets_key", "audit_checkpoint_key"}
    original_keys = {name: (base / "data-live" / name).read_bytes() for name in manifest["keys"]}

    # Destroy the console: its database and its whole DATA_DIR.
    if postgres:
        postgres.drop(first_url)
    shutil.rmtree(base / "data-live")

    fresh_url = postgres.create("restored") if postgres else ""
    restored = _env(base, base / "data-restored", fresh_url)
    started = time.monotonic()
    out = _ok(_run([*MANAGE, "restore", str(backup)], restored, timeout=120), "manage.py restore")
    restore_s = time.monotonic() - started
    assert "audit_verify --checkpoints" in out, out  # the next steps are printed
    assert {name: (base / "data-restored" / name).read_bytes() for name in original_keys} == original_keys

    if postgres:  # the same code on both databases; two processes fewer on SQLite
        again = _run([*MANAGE, "restore", str(backup)], restored)
        assert again.returncode != 0 and "already holds" in again.stderr, "a restore over a live database must refuse"
        # --force drops what the database holds and restores over it; the checks below run against that.
        _ok(_run([*MANAGE, "restore", "--force", str(backup)], restored, timeout=120), "manage.py restore --force")

    exported = [str(backup / "audit-checkpoints"), str(base / "exported")]  # the backup's, and the off-host copies
    checked = _run([*DRILL, "check", str(base / "facts.json"), *exported], restored)
    seen = json.loads(_ok(checked, "the restored console"))
    for directory in exported:
        status, said = seen["audit_verify"][directory]
        assert status == 0 and "events valid" in said, f"audit_verify --checkpoints {directory}: {said}"
    assert seen["login"] and seen["wrong_password_refused"], seen
    assert seen["old_session_status"] == 200, "a session from before the backup must survive (SECRET_KEY restored)"
    assert seen["secret"] == "hf_drillSecretToken0123456789"
    # The server died with the old DATA_DIR: the reconciler fails the deployment and plans its restart.
    assert seen["reconcile_host"]["failed"] == [facts["deployment"]], seen["reconcile_host"]
    assert seen["deployment"] == {"state": "failed", "cause": "vanished", "restart_planned": True}
    assert seen["artifact"]["status"] == "ready"
    assert seen["artifact"]["files"] == {"config.json": "ok", "model.safetensors": "ok"}, seen["artifact"]
    kept = json.loads((backup / "model-store-manifests.json").read_text())
    assert [entry["files_sha256"] for entry in kept if entry["id"] == facts["artifact"]] == [seen["files_sha256"]]
    steps = ", ".join(f"{name} {seconds} s" for name, seconds in STEP_SECONDS)
    return harness.Trial(survived=True, recover_s=round(restore_s, 2), detail=f"{vendor}: {steps}")


@pytest.mark.fault
def test_restore_drill_brings_back_a_working_console(tmp_path):
    url = os.environ.get("DATABASE_URL", "")
    need(url.startswith(("postgres://", "postgresql://")), "the PostgreSQL drill needs DATABASE_URL on PostgreSQL")
    postgres = ScratchPostgres(url)
    with harness.fault_report(
        "restore-drill",
        "Restore drill: back up a console at work, destroy its database and DATA_DIR, restore into new ones",
        "logins, old sessions and stored secrets work; audit_verify passes against the exported checkpoints; the "
        "reconciler fails the vanished deployment and plans its restart; the artifact's files match files_sha256",
    ) as report:
        try:
            for repetition in harness.repetitions():
                for vendor in ("postgresql", "sqlite"):
                    base = tmp_path / f"{vendor}-{repetition}"
                    base.mkdir()
                    scratch = postgres if vendor == "postgresql" else None
                    harness.run_trial(
                        report, lambda base=base, vendor=vendor, scratch=scratch: _drill(base, vendor, scratch)
                    )
        finally:
            postgres.drop_all()
