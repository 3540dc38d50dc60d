"""A database that cannot take a write (its disk full, restarting, out of reach) is a 503 with a sentence and a
Retry-After, never a 500 page; an error that is the request's own (a constraint) stays what it was.
tests/faults/test_disk_full_database.py shows the disk-full case against a real full volume."""

from __future__ import annotations

import psycopg
import pytest
from django.db import IntegrityError, OperationalError

from console.accounts.models import ApiToken
from console.accounts.services import tokens

pytestmark = pytest.mark.django_db


def _raising(error: Exception):
    def create(**kwargs):
        raise error

    return create


def _database_error(django_class, cause: Exception) -> Exception:
    """As Django's wrap_database_errors raises it: the driver's error as the cause."""
    error = django_class(str(cause))
    error.__cause__ = cause
    return error


def test_a_full_database_disk_is_a_503_that_says_so(api, admin, monkeypatch):
    disk_full = psycopg.errors.DiskFull('could not extend file "base/16384/16999": No space left on device')
    monkeypatch.setattr(tokens, "token_create", _raising(_database_error(OperationalError, disk_full)))
    response = api(admin).post("/api/v1/tokens/", {"name": "ci"}, expected=503)
    assert response.json() == {
        "detail": "The database's disk is full, so this change was not saved. An admin must free space on the "
        "database's volume; then try again.",
        "code": "database_full",
    }
    assert response["Retry-After"] == "30"
    assert not ApiToken.objects.filter(name="ci").exists()


def test_a_database_out_of_reach_is_a_503_and_a_constraint_is_not(api, admin, monkeypatch):
    gone = psycopg.OperationalError("server closed the connection unexpectedly")
    monkeypatch.setattr(tokens, "token_create", _raising(_database_error(OperationalError, gone)))
    response = api(admin).post("/api/v1/tokens/", {"name": "ci"}, expected=503)
    assert response.json()["code"] == "database_unavailable" and "not saved" in response.json()["detail"]

    duplicate = psycopg.errors.UniqueViolation("duplicate key value violates unique constraint")
    monkeypatch.setattr(tokens, "token_create", _raising(_database_error(IntegrityError, duplicate)))
    with pytest.raises(IntegrityError):  # a bug to see (a 500 in production), not an outage to wait out
        api(admin).post("/api/v1/tokens/", {"name": "ci"})
