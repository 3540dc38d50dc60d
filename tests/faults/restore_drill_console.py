"""The console side of the restore drill (tests/faults/test_restore_drill.py), run as its own process with the
drill's DATA_DIR and database: `python -m tests.faults.restore_drill_console populate|check FACTS`.

populate: migrate, then an admin with a password, a stored HF token, a deployment running on a host with its
artifact's files on disk, a logged-in session and audit events with a signed checkpoint exported; it writes what
it made to FACTS, then keeps recording audit events (a console at work) until FACTS + ".stop" appears.
check FACTS DIR...: against the restored console, report as JSON what a user would see: the login, the old
session, the secret, `audit_verify --checkpoints DIR` for each DIR, the reconciler's verdict on the deployment and
the artifact's files against files_sha256.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import time
from pathlib import Path

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
django.setup()

from django.test.utils import override_settings  # noqa: E402

# The pages render with the plain static storage (no collectstatic ran in the drill's DATA_DIR), and passwords hash
# with a fast hasher, as in the other tests: both sides of the drill run this module, so the restored hash reads.
override_settings(
    STORAGES={
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    },
    WHITENOISE_USE_FINDERS=True,
    PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
).enable()

from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.contrib.auth.models import Group  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import Client  # noqa: E402
from django.urls import reverse  # noqa: E402

import audit  # noqa: E402
from audit.checkpoints import checkpoint_create, checkpoint_export  # noqa: E402
from console import roles  # noqa: E402
from console.accounts.models import Credential  # noqa: E402
from console.accounts.services.credentials import credential_create  # noqa: E402
from deployments.models import Deployment, ModelArtifact  # noqa: E402
from tests.factories.inventory import GpuFactory, HostFactory  # noqa: E402
from tests.factories.registry import ModelArtifactFactory  # noqa: E402
from tests.factories.serving import DeploymentFactory, DeploymentSpecFactory  # noqa: E402
from workers.integrity import check_directory  # noqa: E402
from workers.reconcile import reconcile_console, reconcile_host  # noqa: E402

USERNAME, PASSWORD = "drill-admin", "drill-Passw0rd-that-is-long"
TOKEN = "hf_drillSecretToken0123456789"
FILES = {"config.json": b'{"model_type": "llama"}', "model.safetensors": os.urandom(4096)}


def _log_in(client: Client, password: str) -> bool:
    client.post(reverse("login"), {"username": USERNAME, "password": password})
    return "_auth_user_id" in client.session


def populate(facts_path: Path) -> None:
    call_command("migrate", interactive=False, verbosity=0)
    admin = get_user_model().objects.create_user(username=USERNAME, password=PASSWORD)
    admin.groups.add(Group.objects.get(name=roles.ADMIN))
    credential = credential_create(actor=admin, name="hub-token", value=TOKEN)
    host = HostFactory(name="drill-host")
    GpuFactory(host=host)
    artifact = ModelArtifactFactory(host=host)
    directory = Path(artifact.path)
    directory.mkdir(parents=True)
    for name, content in FILES.items():
        (directory / name).write_bytes(content)
    artifact.files_sha256 = {name: hashlib.sha256(content).hexdigest() for name, content in FILES.items()}
    artifact.save(update_fields=["files_sha256"])
    deployment = DeploymentFactory(
        name="drill-chat", host=host, state=Deployment.State.RUNNING, restart_policy=Deployment.RestartPolicy.ON_FAILURE
    )
    DeploymentSpecFactory(deployment=deployment, artifact=artifact, current=True)
    audit.record(action="deployment.started", actor=admin, target=deployment)
    client = Client()
    assert _log_in(client, PASSWORD), "the drill's admin cannot log in before the backup"
    checkpoint_create()
    checkpoint_export(settings.AUDIT_CHECKPOINT_EXPORT_DIR)
    facts = {
        "credential": credential.pk,
        "deployment": deployment.pk,
        "artifact": artifact.pk,
        "host": host.name,
        "session": client.cookies[settings.SESSION_COOKIE_NAME].value,
    }
    facts_path.write_text(json.dumps(facts))
    stop = facts_path.with_name(facts_path.name + ".stop")
    while not stop.exists():  # the console at work while the backup runs
        audit.record(action="drill.tick", actor=admin)
        time.sleep(0.05)


def _audit_verify(checkpoints: str) -> tuple[int, str]:
    """`manage.py audit_verify --checkpoints DIR`: its exit status and what it printed."""
    out = io.StringIO()
    try:
        call_command("audit_verify", checkpoints=Path(checkpoints), stdout=out, no_color=True)
    except SystemExit as exit:
        return int(exit.code or 0), out.getvalue()
    return 0, out.getvalue()


def check(facts_path: Path, *checkpoint_dirs: str) -> None:
    facts = json.loads(facts_path.read_text())
    verified = {directory: _audit_verify(directory) for directory in checkpoint_dirs}
    old_session = Client()
    old_session.cookies[settings.SESSION_COOKIE_NAME] = facts["session"]
    deployment_page = old_session.get(reverse("deployment-detail", args=[facts["deployment"]]))
    refused = _log_in(Client(), "not-the-password")
    logged_in = _log_in(Client(), PASSWORD)
    secret = Credential.objects.get(pk=facts["credential"]).value.reveal()
    console_side = reconcile_console()
    host_side = reconcile_host(facts["host"])
    deployment = Deployment.objects.get(pk=facts["deployment"])
    artifact = ModelArtifact.objects.get(pk=facts["artifact"])
    files = check_directory(artifact.path, artifact.files_sha256)
    print(
        json.dumps(
            {
                "login": logged_in,
                "wrong_password_refused": not refused,
                "old_session_status": deployment_page.status_code,
                "secret": secret,
                "reconcile_console": console_side,
                "reconcile_host": host_side,
                "deployment": {
                    "state": deployment.state,
                    "cause": deployment.failure_cause,
                    "restart_planned": deployment.next_restart_at is not None,
                },
                "artifact": {"status": artifact.status, "files": {f.path: f.status for f in files}},
                "files_sha256": artifact.files_sha256,
                "audit_verify": verified,
            }
        )
    )


if __name__ == "__main__":
    {"populate": populate, "check": check}[sys.argv[1]](Path(sys.argv[2]), *sys.argv[3:])
