"""Factories for the inventory: hosts and their GPUs."""

from __future__ import annotations

import factory
from django.conf import settings
from django.db.models import Max

from deployments.models import Gpu, Host

GB = 10**9


class HostFactory(factory.django.DjangoModelFactory):
    """An online host with the process runtime and the configured model store (what the deploy tests run on).

    `manual=True` gives the model's defaults instead: registered by hand, docker runtime, no model store."""

    class Meta:
        model = Host

    class Params:
        manual = factory.Trait(status=Host.Status.MANUAL, runtime=Host.Runtime.DOCKER, model_store="")

    name = factory.Sequence(lambda n: f"host-{n}")  # a lowercase slug: it names the queue host.<name>
    runtime = Host.Runtime.PROCESS
    status = Host.Status.ONLINE
    model_store = factory.LazyFunction(lambda: str(settings.MODEL_STORE))


def _next_index(host: Host) -> int:
    """The next free GPU index on the host (0 on a host without GPUs)."""
    if host.pk is None:
        return 0
    highest = host.gpus.aggregate(highest=Max("index"))["highest"]
    return 0 if highest is None else highest + 1


class GpuFactory(factory.django.DjangoModelFactory):
    """A healthy 16 GB "Test GPU", at the next index of its host."""

    class Meta:
        model = Gpu

    host = factory.SubFactory(HostFactory)
    index = factory.LazyAttribute(lambda o: _next_index(o.host))
    name = "Test GPU"
    memory_total = 16 * GB
    health = Gpu.Health.OK
