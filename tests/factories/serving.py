"""Factories for deployments and their versioned specs, made directly (no service, no job)."""

from __future__ import annotations

import factory
from django.db.models import Max

from deployments.models import Deployment, DeploymentSpec
from tests.factories.registry import ModelArtifactFactory


class DeploymentFactory(factory.django.DjangoModelFactory):
    """A stopped deployment without a spec (see DeploymentSpecFactory's `current`)."""

    class Meta:
        model = Deployment

    name = factory.Sequence(lambda n: f"deployment-{n}")  # a DNS label: it names the container
    state = Deployment.State.STOPPED


def _next_version(deployment: Deployment) -> int:
    """The deployment's next spec version (1 for its first)."""
    if deployment.pk is None:
        return 1
    highest = deployment.specs.aggregate(highest=Max("version"))["highest"]
    return (highest or 0) + 1


class DeploymentSpecFactory(factory.django.DjangoModelFactory):
    """The next version of a deployment's spec. `current=True` also makes it the deployment's current spec."""

    class Meta:
        model = DeploymentSpec
        skip_postgeneration_save = True

    deployment = factory.SubFactory(DeploymentFactory)
    version = factory.LazyAttribute(lambda o: _next_version(o.deployment))
    artifact = factory.SubFactory(ModelArtifactFactory)

    @factory.post_generation
    def current(self, create, extracted, **kwargs):
        if create and extracted:
            self.deployment.spec = self
            self.deployment.save(update_fields=["spec"])
