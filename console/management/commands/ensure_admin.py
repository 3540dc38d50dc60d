import os
import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand

import audit
from console import roles


class Command(BaseCommand):
    help = (
        "Create the first admin if no active admin exists. Its generated password goes to a file only "
        "its owner can read; the command prints the file's path, never the password."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--username", default=os.environ.get("CONSOLE_ADMIN_USERNAME", "admin"))
        parser.add_argument("--password-file", default=None, help="Default: DATA_DIR/initial_admin_password")

    def handle(self, *args, username: str, password_file: str | None, **options) -> None:
        group, _ = Group.objects.get_or_create(name=roles.ADMIN)
        path = Path(password_file or settings.DATA_DIR / "initial_admin_password")
        if group.user_set.filter(is_active=True).exists():
            self.stdout.write(f"An admin exists already; first admin's password file: {path}")
            return
        User = get_user_model()
        password = secrets.token_urlsafe(18)
        user, _created = User.objects.get_or_create(username=username)
        user.is_active = True
        user.set_password(password)
        user.save()
        user.groups.add(group)
        audit.record(
            action="user.created",
            actor=None,
            actor_name="system (ensure_admin)",
            target=user,
            changes={"username": [None, username], "roles": [[], [roles.ADMIN]]},
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"username: {username}\npassword: {password}\n")
        self.stdout.write(f"Created admin '{username}'; the password is in {path} (readable only by you)")
