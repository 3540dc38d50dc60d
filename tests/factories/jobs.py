"""Factories for jobs, made directly (not queued: tests that need dispatching use deployments.jobs.services)."""

from __future__ import annotations

import factory

from deployments.models import Job


class JobFactory(factory.django.DjangoModelFactory):
    """A pending download job. `target=obj` fills target_type and target_id as job_create does."""

    class Meta:
        model = Job

    class Params:
        target = None

    kind = Job.Kind.DOWNLOAD
    status = Job.Status.PENDING
    target_type = factory.LazyAttribute(lambda o: o.target._meta.label_lower if o.target is not None else "")
    target_id = factory.LazyAttribute(lambda o: str(o.target.pk) if o.target is not None else "")
