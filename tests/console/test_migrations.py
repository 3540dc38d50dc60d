"""Migrations: complete, and re-runnable on both PostgreSQL and SQLite (`make test` runs both)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, Permission
from django.core.management import call_command
from django.db import connection

from console import roles

pytestmark = [pytest.mark.both_databases, pytest.mark.django_db]


def test_no_model_change_lacks_a_migration():
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


def test_roles_exist_after_migrate_with_exactly_their_actions():
    for role, actions in roles.ROLES.items():
        held = set(Group.objects.get(name=role).permissions.values_list("codename", flat=True))
        assert held == set(actions), role


def test_grantable_object_permissions_exist():
    for label, actions in roles.GRANTABLE.items():
        model_name = label.split(".", 1)[1]
        codenames = set(Permission.objects.filter(content_type__model=model_name).values_list("codename", flat=True))
        assert {roles.object_codename(a, model_name) for a in actions} <= codenames


@pytest.mark.django_db(transaction=True)
def test_console_migrations_reverse_and_reapply():
    call_command("migrate", "console", "zero", verbosity=0)
    assert "console_credential" not in connection.introspection.table_names()
    call_command("migrate", verbosity=0)
    assert "console_credential" in connection.introspection.table_names()
    assert Group.objects.filter(name__in=list(roles.ROLES)).count() == 3


def test_database_vendor_is_the_one_asked_for():
    import os

    expected = "postgresql" if os.environ.get("DATABASE_URL", "").startswith(("postgres", "postgresql")) else "sqlite"
    assert connection.vendor == expected
