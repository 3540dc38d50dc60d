"""Per-object grants follow their object out: guardian keeps them in generic tables (content type + object pk as
text), which no foreign key cascades from, so a deleted deployment, credential, dataset, host or team left its
grants behind. A post_delete receiver per grantable model (console/signals.py) drops them; prune_stale_grants
removes what was left before it, or by a delete that sends no signal (raw SQL)."""

from __future__ import annotations

from django.apps import apps
from django.contrib.contenttypes.models import ContentType
from django.db.models import CharField, Model
from django.db.models.functions import Cast

from console import roles


def grantable_models() -> list[type[Model]]:
    return [apps.get_model(label) for label in roles.GRANTABLE]


def _grant_models():
    from guardian.models import GroupObjectPermission, UserObjectPermission

    return UserObjectPermission, GroupObjectPermission


def drop_grants(model: type[Model], pks: list, using: str = "default") -> int:
    """Delete the user and team grants on these objects of model; how many went."""
    kind = ContentType.objects.db_manager(using).get_for_model(model)
    texts = [str(pk) for pk in pks]
    return sum(
        grants.objects.using(using).filter(content_type=kind, object_pk__in=texts).delete()[0]
        for grants in _grant_models()
    )


def prune_stale_grants() -> int:
    """Delete every grant whose object no longer exists; how many went."""
    removed = 0
    for model in grantable_models():
        kind = ContentType.objects.get_for_model(model)
        existing = model._default_manager.annotate(pk_text=Cast("pk", CharField())).values("pk_text")
        for grants in _grant_models():
            removed += grants.objects.filter(content_type=kind).exclude(object_pk__in=existing).delete()[0]
    return removed
