"""Reads of datasets, each starting from the permission filter (console.permissions.restrict_datasets)."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db.models import Count, QuerySet

from console import roles
from console.permissions import ObjectHidden, dataset_allows, restrict_datasets
from deployments.datasets.models import Dataset, DatasetUpload, DatasetVersion


def dataset_list(*, user) -> QuerySet:
    """The datasets the user can see, with their version counts."""
    datasets = Dataset.objects.select_related("team", "created_by").annotate(version_count=Count("versions"))
    return restrict_datasets(datasets, user).order_by("name")


def version_list(*, dataset: Dataset) -> QuerySet:
    return dataset.versions.select_related("created_by").order_by("-version")


def version_get(*, dataset: Dataset, number) -> DatasetVersion | None:
    try:
        return dataset.versions.filter(version=int(number)).first()
    except (TypeError, ValueError):
        return None


def upload_get(*, user, pk) -> DatasetUpload | None:
    """An upload the user may see (one of a dataset they can see), or None; one of a hidden dataset is an
    audited 404."""
    try:
        upload = DatasetUpload.objects.select_related("dataset").filter(pk=pk).first()
    except (TypeError, ValueError, ValidationError):  # not a UUID
        return None
    if upload is None:
        return None
    if not dataset_allows(user, roles.VIEW, upload.dataset):
        raise ObjectHidden(user, roles.MANAGE_DATASETS, upload.dataset)
    return upload
