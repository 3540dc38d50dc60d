"""Factories for the model registry: sources, repos pinned to a commit, and their copies on hosts."""

from __future__ import annotations

from pathlib import Path

import factory
from django.conf import settings

from deployments.models import ModelArtifact, ModelRepo, ModelSource
from tests.factories.inventory import HostFactory


class ModelSourceFactory(factory.django.DjangoModelFactory):
    """The Hugging Face Hub, as a source named "hub" (got again, not duplicated: names are unique)."""

    class Meta:
        model = ModelSource
        django_get_or_create = ("name",)

    name = "hub"
    kind = ModelSource.Kind.HUB


class ModelRepoFactory(factory.django.DjangoModelFactory):
    """A repo pinned to a commit (40 hex digits)."""

    class Meta:
        model = ModelRepo

    source = factory.SubFactory(ModelSourceFactory)
    repo_id = factory.Sequence(lambda n: f"org/model-{n}")
    commit = factory.Sequence(lambda n: f"{n:040x}")


def _store(host) -> Path:
    return Path(host.model_store or settings.MODEL_STORE)


class ModelArtifactFactory(factory.django.DjangoModelFactory):
    """A READY copy of a repo on a host, at the path the download job would have put it."""

    class Meta:
        model = ModelArtifact

    repo = factory.SubFactory(ModelRepoFactory)
    host = factory.SubFactory(HostFactory)
    status = ModelArtifact.Status.READY
    path = factory.LazyAttribute(lambda o: str(_store(o.host) / o.repo.repo_id.replace("/", "--") / o.repo.commit))
