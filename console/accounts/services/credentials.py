"""Stored secrets (HF tokens...): written, replaced, deleted; never read back through the console."""

from __future__ import annotations

from django.apps import apps
from django.db import transaction
from django.db.models import TextField
from django.db.models.functions import Cast

import audit
from audit.celery_context import task_headers
from audit.recorder import diff
from audit.telemetry import traced
from console import roles
from console.accounts.models import Credential
from console.crypto import encrypted_with_newest
from console.dispatch import ROTATE_SECRETS, dispatch
from console.errors import ApplicationError
from console.fields import EncryptedSecretField
from console.permissions import require, require_owner


@traced("credential.create")
@transaction.atomic
def credential_create(
    *, actor, name: str, value: str, kind: str = Credential.Kind.HF_TOKEN, description: str = "", team=None
) -> Credential:
    """Store a secret. Anyone who may add models may store the token a download needs."""
    require(actor, roles.ADD_MODEL)
    if not value or not value.strip():
        raise ApplicationError("The secret value is empty.", field="value")
    if Credential.objects.filter(name=name).exists():
        raise ApplicationError(f"A credential named '{name}' already exists.", field="name")
    credential = Credential.objects.create(
        name=name, value=value.strip(), kind=kind, description=description, team=team, created_by=actor
    )
    audit.record(action="credential.created", actor=actor, target=credential, changes=diff({}, _state(credential)))
    return credential


@traced("credential.update")
@transaction.atomic
def credential_update(
    *, actor, credential: Credential, value: str | None = None, description: str | None = None, name: str | None = None
) -> Credential:
    """Replace a secret's value (when given) or its description; the old value is gone. Only its owners
    (console.permissions.require_owner) may."""
    require_owner(actor, roles.ADD_MODEL, credential)
    before = _state(credential)
    if name is not None and name != credential.name:
        if Credential.objects.filter(name=name).exclude(pk=credential.pk).exists():
            raise ApplicationError(f"A credential named '{name}' already exists.", field="name")
        credential.name = name
    if value is not None:
        if not value.strip():
            raise ApplicationError("The secret value is empty.", field="value")
        credential.value = value.strip()
    if description is not None:
        credential.description = description
    changes = diff(before, _state(credential))
    if changes:
        credential.save()
        audit.record(action="credential.updated", actor=actor, target=credential, changes=changes)
    return credential


@traced("credential.delete")
@transaction.atomic
def credential_delete(*, actor, credential: Credential) -> None:
    """Delete a secret. Only its owners (console.permissions.require_owner) may."""
    require_owner(actor, roles.ADD_MODEL, credential)
    audit.record(action="credential.deleted", actor=actor, target=credential, changes=diff(_state(credential), {}))
    credential.delete()


def _state(credential: Credential) -> dict:
    """What an audit diff shows of a credential; the value appears only as a mask."""
    return {
        "name": credential.name,
        "kind": credential.kind,
        "description": credential.description,
        "team": str(credential.team) if credential.team_id else None,
        "value": credential.value,
    }


def _encrypted_fields() -> list[tuple[type, list[str]]]:
    found = []
    for model in apps.get_models():
        names = [f.name for f in model._meta.concrete_fields if isinstance(f, EncryptedSecretField)]
        if names:
            found.append((model, names))
    return found


@traced("secret.rotate")
@transaction.atomic
def secrets_rotate(*, actor=None, actor_name: str = "system") -> dict[str, int]:
    """Re-encrypt every stored secret under the newest key; returns rows re-encrypted per model.

    After it, the older keys in SECRETS_ENCRYPTION_KEYS can be removed.
    """
    counts: dict[str, int] = {}
    for model, names in _encrypted_fields():
        count = 0
        for obj in model.objects.select_for_update().iterator(chunk_size=500):
            # Saving re-encrypts: get_prep_value always encrypts with the newest key.
            obj.save(update_fields=names)
            count += 1
        counts[model._meta.label] = count
    audit.record(action="secret.rotated", actor=actor, actor_name=actor_name, detail={"re_encrypted": counts})
    return counts


@traced("secret.rotate_enqueue")
@transaction.atomic
def secrets_rotate_enqueue(*, actor) -> None:
    """Ask a worker to re-encrypt every secret under the newest key. Needs manage_users."""
    require(actor, roles.MANAGE_USERS)
    audit.record(action="secret.rotation_requested", actor=actor)
    headers = task_headers(initiator=actor)
    transaction.on_commit(lambda: dispatch(ROTATE_SECRETS, headers=headers))


def secrets_pending_rotation() -> int:
    """How many stored secrets the newest key alone cannot decrypt."""
    pending = 0
    for model, names in _encrypted_fields():
        # Cast to a plain text column so the raw ciphertext comes back, not a decrypted Secret.
        for row in model.objects.values_list(*[Cast(name, output_field=TextField()) for name in names]):
            pending += sum(1 for token in row if token is not None and not encrypted_with_newest(token))
    return pending
