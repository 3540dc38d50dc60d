"""Issue 12, item 5: the application's database identity cannot rewrite the audit log, and what the owner can do
to it is caught by checkpoints exported outside the database. On PostgreSQL with two roles: the owner (the
test's connection, as migrate's) and the application role that `audit_db_roles` (run by migrate) creates."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection

import audit
from audit import guard
from audit.checkpoints import checkpoint_create
from audit.models import AuditCheckpoint, AuditEvent
from audit.tasks import checkpoint as checkpoint_task
from tests.conftest import ROOT, need

pytestmark = pytest.mark.django_db(transaction=True)
PASSWORD = "app-role-password-for-the-test"


@pytest.fixture
def app_role(settings):
    """The application role, made by the command migrate runs; dropped with its grants afterwards."""
    need(connection.vendor == "postgresql", "PostgreSQL (DATABASE_URL): roles exist only there")
    role = f"console_app_t{os.getpid()}"
    settings.DATABASE_APP_PASSWORD, settings.DATABASE_APP_USER = PASSWORD, role
    call_command("migrate", verbosity=0)  # migrate, as the owner, creates the role...
    with connection.cursor() as cursor:
        cursor.execute("SELECT rolcanlogin, rolsuper FROM pg_roles WHERE rolname = %s", [role])
        assert cursor.fetchone() == (True, False)
    call_command("audit_db_roles", verbosity=0)  # ...and the command is idempotent (migrate runs it every time)
    yield role
    with connection.cursor() as cursor:
        cursor.execute(f"DROP OWNED BY {role}")
        cursor.execute(f"DROP ROLE {role}")


def _connect_as(role: str) -> psycopg.Connection:
    db = connection.settings_dict
    return psycopg.connect(
        host=db["HOST"] or "127.0.0.1",
        port=db["PORT"] or 5432,
        dbname=db["NAME"],
        user=role,
        password=PASSWORD,
        autocommit=True,
    )


def _app_env(role: str) -> dict[str, str]:
    db = connection.settings_dict
    url = f"postgres://{role}:{PASSWORD}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    return {
        **os.environ,
        "DATABASE_URL": url,
        "DATA_DIR": str(settings.DATA_DIR),
        "AUDIT_CHECKPOINT_KEY": settings.AUDIT_CHECKPOINT_KEY,
        "SECRETS_ENCRYPTION_KEYS": ",".join(settings.SECRETS_ENCRYPTION_KEYS),
        "REDIS_URL": settings.REDIS_URL,
    }


APP_WORK = """
import audit
from audit.checkpoints import checkpoint_create
from deployments.models import Host
host = Host.objects.create(name="made-by-the-app-role")
Host.objects.filter(pk=host.pk).update(name="renamed-by-the-app-role")
audit.record(action="test.app_role", actor=None, actor_name="app", detail={"ok": True})
print("checkpoint", checkpoint_create().id)
"""


def test_the_app_role_runs_the_console_but_cannot_rewrite_the_audit_log(app_role):
    audit.record(action="test.before", actor=None, actor_name="owner")
    # The console works as the application role: ordinary tables written, an event and a checkpoint added.
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", APP_WORK],
        cwd=ROOT,
        env=_app_env(app_role),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert AuditEvent.objects.filter(action="test.app_role").exists() and AuditCheckpoint.objects.exists()

    # What the owner could do to hide an event, the application role may not: each is refused by privilege,
    # before the guard's trigger is even reached.
    attacks = [
        "UPDATE audit_auditevent SET actor_name = 'mallory'",
        "DELETE FROM audit_auditevent WHERE action = 'test.app_role'",
        "TRUNCATE audit_auditevent",
        "DELETE FROM audit_auditcheckpoint",
        "UPDATE audit_auditcheckpoint SET count = 0",
        "ALTER TABLE audit_auditevent DISABLE TRIGGER USER",
        "DROP TRIGGER audit_auditevent_no_change ON audit_auditevent",
        "DROP FUNCTION audit_refuse_change() CASCADE",
        "INSERT INTO django_migrations (app, name, applied) VALUES ('audit', 'x', now())",
    ]
    with _connect_as(app_role) as conn:
        for statement in attacks:
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
                conn.execute(statement)
            assert "append-only" not in str(refused.value), statement  # the privilege, not the trigger
        assert conn.execute("SELECT count(*) FROM audit_auditevent").fetchone()[0] == AuditEvent.objects.count()
    assert guard.installed(connection)
    assert AuditEvent.objects.filter(action="test.app_role").count() == 1


def test_exported_checkpoints_reveal_deleted_newest_events_after_the_rows_are_gone(tmp_path, settings, capsys):
    settings.AUDIT_CHECKPOINT_EXPORT_DIR = str(tmp_path / "exported")
    for i in range(5):
        audit.record(action="test.event", actor=None, actor_name=f"early-{i}")
    checkpoint_task()  # beat's task: sign, then export
    kept_head = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first()
    for i in range(3):
        audit.record(action="test.event", actor=None, actor_name=f"late-{i}")
    checkpoint_task()
    files = sorted((tmp_path / "exported").iterdir())
    assert [path.name for path in files] == [
        f"checkpoint-{c.id:012d}.json" for c in AuditCheckpoint.objects.order_by("id")
    ]
    assert all(path.stat().st_mode & 0o777 == 0o400 for path in files)
    checkpoint_task()  # nothing new: nothing rewritten
    assert sorted((tmp_path / "exported").iterdir()) == files

    # Someone with the owner's rights deletes the newest events and every checkpoint row.
    with connection.cursor() as cursor:
        guard.uninstall(connection)
        cursor.execute("DELETE FROM audit_auditevent WHERE id > %s", [kept_head])
        cursor.execute("DELETE FROM audit_auditcheckpoint")
        guard.install(connection)
    call_command("audit_verify")  # what the database alone says: a shorter, valid chain
    assert "events valid" in capsys.readouterr().out

    with pytest.raises(SystemExit) as failed:
        call_command("audit_verify", "--checkpoints", str(tmp_path / "exported"))
    assert failed.value.code == 1
    out = capsys.readouterr().out
    assert "exported checkpoint" in out and "history rewritten" in out


def test_a_checkpoint_cannot_be_signed_without_the_key(settings):
    """GPU agents hold no AUDIT_CHECKPOINT_KEY (GPU_AGENT=true): they cannot vouch for the log."""
    audit.record(action="test.event", actor=None, actor_name="agent")
    settings.AUDIT_CHECKPOINT_KEY = ""
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="signed on the console"):
        checkpoint_create()
    env = {**os.environ, "GPU_AGENT": "true", "DATA_DIR": str(settings.DATA_DIR)}
    env.pop("AUDIT_CHECKPOINT_KEY", None)
    shown = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='console.settings'; "
            "from django.conf import settings; print(repr(settings.AUDIT_CHECKPOINT_KEY))",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert shown.stdout.strip() == "''"
