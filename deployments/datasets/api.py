"""Datasets API. Reading a dataset (schema, counts, problems by line) needs to see it
(console.permissions.restrict_datasets); rows only through `preview` (view_data, audited); adding, versioning and
deleting need manage_datasets on it; computing a version's statistics (`versions/{n}/stats/`) needs use of it
(finetune) or manage_datasets. Uploads: POST `uploads/` opens one, PUT `uploads/{id}/` appends a chunk of at
most 8 MiB at `?offset=` (or `Content-Range: bytes START-END/TOTAL`), GET says where it stands, POST
`uploads/{id}/complete/` turns it into a version."""

from __future__ import annotations

import re

from django.http import Http404
from django.utils.translation import gettext
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from console import roles
from console.api.parsers import REFUSAL, has_unstorable_text
from console.errors import ApplicationError
from console.permissions import ObjectHidden, dataset_allows, require, require_dataset, require_dataset_manager
from deployments.datasets import selectors, services, stats
from deployments.datasets.errors import DatasetInvalid, UploadConflict, UploadTooLarge
from deployments.datasets.hub_import import hub_import_cancel, hub_import_start
from deployments.datasets.models import Dataset
from deployments.datasets.serializers import (
    DatasetSerializer,
    HubImportCancelSerializer,
    HubImportSerializer,
    PreviewSerializer,
    StatsStartSerializer,
    UploadCompleteSerializer,
    UploadSerializer,
    UploadStartSerializer,
    VersionSerializer,
)
from deployments.models import Job
from deployments.registry.models import ModelArtifact

CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
VERSION = r"versions/(?P<version>[0-9]+)"


def refusal(error: ApplicationError) -> Response:
    """An upload refusal with its status: 413 too large, 409 out of order (with `received`), 400 otherwise."""
    body = error.as_dict()
    if isinstance(error, UploadConflict):
        body["received"] = error.received
    if isinstance(error, DatasetInvalid):
        body["errors"] = VersionSerializer().fields["validation_errors"].to_representation(error.errors)
        body["error_count"] = error.error_count
    return Response(body, status=getattr(error, "status", status.HTTP_400_BAD_REQUEST))


class DatasetApiMixin:
    """Authorization for the dataset routes: the view role to reach them at all (403), then each dataset through
    console.permissions (hidden: an audited 404; seen but not allowed: 403)."""

    def initial(self, request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)
        unstorable = [name for name, values in request.query_params.lists() if has_unstorable_text([name, *values])]
        if unstorable:
            raise ValidationError({name: [REFUSAL] for name in unstorable})
        if request.method != "OPTIONS":
            require(request.user, roles.VIEW)

    def dataset(self, action: str = roles.VIEW) -> Dataset:
        pk = self.kwargs.get("pk")
        found = Dataset.objects.select_related("team").filter(pk=pk).first() if str(pk).isdigit() else None
        if found is None:
            raise Http404
        if not dataset_allows(self.request.user, roles.VIEW, found):
            raise ObjectHidden(self.request.user, action, found)
        require_dataset(self.request.user, action, found)
        return found


class DatasetViewSet(DatasetApiMixin, viewsets.GenericViewSet):
    """Datasets a team owns; `?search=` by name."""

    serializer_class = DatasetSerializer
    queryset = Dataset.objects.none()

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Dataset.objects.none()
        return selectors.dataset_list(user=self.request.user)

    def list(self, request):
        datasets = self.get_queryset()
        search = request.query_params.get("search", "").strip()
        if search:
            datasets = datasets.filter(name__icontains=search)
        page = self.paginate_queryset(datasets)
        return self.get_paginated_response(DatasetSerializer(page, many=True).data)

    def create(self, request):
        """Add a dataset for a team (manage_datasets by role, or a steward team of yours); versions come by upload."""
        serializer = DatasetSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        dataset = services.dataset_create(
            actor=request.user, name=data["name"], team=data["team"], description=data.get("description", "")
        )
        return Response(DatasetSerializer(dataset).data, status=status.HTTP_201_CREATED)

    def retrieve(self, request, pk=None):
        return Response(DatasetSerializer(self.dataset()).data)

    @extend_schema(responses={204: None})
    def destroy(self, request, pk=None):
        """Delete the dataset and every version, unless a job references one of them (400)."""
        services.dataset_delete(actor=request.user, dataset=self.dataset(roles.MANAGE_DATASETS))
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(responses={200: VersionSerializer(many=True)})
    @action(detail=True, methods=["get"])
    def versions(self, request, pk=None):
        """Its versions: sha256, size, format, shape, rows, columns and validation problems by line (no rows)."""
        versions = selectors.version_list(dataset=self.dataset())
        page = self.paginate_queryset(versions)
        return self.get_paginated_response(VersionSerializer(page, many=True).data)

    def _version(self, action: str):
        found = selectors.version_get(dataset=self.dataset(action), number=self.kwargs["version"])
        if found is None:
            raise Http404
        return found

    @extend_schema(responses={200: VersionSerializer, 204: None})
    @action(detail=True, methods=["get", "delete"], url_path=VERSION, url_name="version")
    def version(self, request, pk=None, version=None):
        """One version (GET); DELETE removes it and its file unless a job references it."""
        if request.method == "DELETE":
            services.version_delete(actor=request.user, version=self._version(roles.MANAGE_DATASETS))
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(VersionSerializer(self._version(roles.VIEW)).data)

    @extend_schema(
        parameters=[OpenApiParameter("limit", OpenApiTypes.INT, description="rows, 1 to 100 (default 20)")],
        responses={200: PreviewSerializer},
    )
    @action(detail=True, methods=["get"], url_path=f"{VERSION}/preview", url_name="version-preview")
    def preview(self, request, pk=None, version=None):
        """The first rows of a version: view_data only (admins, auditors, or a grant of it); each is audited."""
        found = self._version(roles.VIEW_DATA)
        limit = request.query_params.get("limit", "20")
        if not limit.isdigit():
            raise ValidationError({"limit": ["A number of rows, 1 to 100."]})
        rows = services.version_preview(actor=request.user, version=found, limit=int(limit))
        return Response({"version": found.version, "rows": rows})

    @extend_schema(request=StatsStartSerializer, responses={202: OpenApiTypes.OBJECT})
    @action(detail=True, methods=["post"], url_path=f"{VERSION}/stats", url_name="version-stats")
    def version_stats(self, request, pk=None, version=None):
        """Compute the version's statistics with a model's tokenizer (`tokenizer`: a ready model's id, or null for
        none): 202 with the job; they appear in the version's `stats`. Needs use of the dataset or manage_datasets;
        409 while a statistics job of this version runs."""
        found = self._version(roles.VIEW)
        stats.require_stats_use(request.user, found.dataset)
        serializer = StatsStartSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        tokenizer_id = serializer.validated_data.get("tokenizer")
        tokenizer = None
        if tokenizer_id is not None:
            tokenizer = ModelArtifact.objects.select_related("repo", "host").filter(pk=tokenizer_id).first()
            if tokenizer is None:
                raise ValidationError({"tokenizer": [gettext("No such model.")]})
        try:
            job = stats.stats_start(actor=request.user, version=found, tokenizer=tokenizer)
        except ApplicationError as error:
            return refusal(error)
        return Response({"job": job.pk}, status=status.HTTP_202_ACCEPTED)

    # -- importing from the Hub (deployments.datasets.hub_import) -------------------------------------------------

    @extend_schema(request=HubImportSerializer, responses={202: OpenApiTypes.OBJECT})
    @action(detail=True, methods=["post"], url_path="import", url_name="import")
    def import_from_hub(self, request, pk=None):
        """Import one file of a Hub dataset repo as the next version (manage_datasets): the revision is pinned to a
        commit now, a job downloads and validates the file. 202 `{"job": id}`; 400 with the field at fault (source
        not allowed or unreachable, no such repo, revision or file, a gated repo, not a dataset format, too large)."""
        serializer = HubImportSerializer(data=request.data)  # the body's shape first, as an upload's start
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        dataset = self.dataset(roles.MANAGE_DATASETS)
        job = hub_import_start(
            actor=request.user,
            dataset=dataset,
            source=data["source"],
            repo_id=data["repo_id"],
            revision=data["revision"] or "main",
            path=data["path"],
            credential=data.get("credential"),
        )
        return Response({"job": job.pk}, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=HubImportCancelSerializer, responses={202: OpenApiTypes.OBJECT})
    @action(detail=True, methods=["post"], url_path="import/cancel", url_name="import-cancel")
    def cancel_import(self, request, pk=None):
        """Stop an import (`job`) of this dataset (manage_datasets): nothing is registered. 202 `{"job": id}`."""
        dataset = self.dataset(roles.MANAGE_DATASETS)
        serializer = HubImportCancelSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        found = Job.objects.filter(pk=serializer.validated_data["job"]).first()
        if found is None:
            raise ValidationError({"job": [gettext("No such import.")]})
        found = hub_import_cancel(actor=request.user, dataset=dataset, job=found)
        return Response({"job": found.pk}, status=status.HTTP_202_ACCEPTED)


class DatasetUploadViewSet(DatasetApiMixin, viewsets.GenericViewSet):
    """Resumable uploads of new versions (manage_datasets)."""

    serializer_class = UploadSerializer
    queryset = Dataset.objects.none()

    def initial(self, request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)
        if request.method != "OPTIONS":
            require_dataset_manager(request.user)

    def _upload(self):
        upload = selectors.upload_get(user=self.request.user, pk=self.kwargs.get("pk"))
        if upload is None:
            raise Http404
        return upload

    @extend_schema(request=UploadStartSerializer, responses={201: UploadSerializer})
    def create(self, request):
        """Open an upload: `dataset`, `filename`, `size` (at most DATASET_UPLOAD_MAX_BYTES, else 413), optional
        `format` (else from the file name) and `sha256` (checked on completion)."""
        serializer = UploadStartSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        self.kwargs["pk"] = data["dataset"]
        dataset = self.dataset(roles.MANAGE_DATASETS)
        try:
            upload = services.upload_start(
                actor=request.user,
                dataset=dataset,
                filename=data["filename"],
                size=data["size"],
                sha256=data.get("sha256", ""),
                fmt=data.get("format", ""),
            )
        except ApplicationError as error:
            return refusal(error)
        return Response(UploadSerializer(upload).data, status=status.HTTP_201_CREATED)

    def retrieve(self, request, pk=None):
        """Where the upload stands: `received` is the offset to resume from."""
        return Response(UploadSerializer(self._upload()).data)

    @extend_schema(
        request={"application/octet-stream": OpenApiTypes.BINARY},
        parameters=[OpenApiParameter("offset", OpenApiTypes.INT, description="where this chunk goes")],
        responses={200: UploadSerializer},
    )
    def update(self, request, pk=None):
        """Append one chunk (at most 8 MiB, else 413) at `?offset=` or `Content-Range`; the offset must be the
        upload's `received` (else 409 with `received`)."""
        upload = self._upload()
        try:
            offset, length = self._placement(request)
            if length is not None and length > services.CHUNK_MAX_BYTES:  # refused before a byte is read
                raise UploadTooLarge(
                    f"A chunk is at most {services.CHUNK_MAX_BYTES} bytes (8 MiB); this one is {length}.", field="chunk"
                )
            stream = request.stream if length != 0 else None
            upload = services.upload_chunk(
                actor=request.user, upload=upload, offset=offset, stream=stream or _Empty(), length=length
            )
        except ApplicationError as error:
            return refusal(error)
        return Response(UploadSerializer(upload).data)

    @staticmethod
    def _placement(request) -> tuple[int, int | None]:
        """(offset, length) from Content-Range or ?offset= with Content-Length."""
        header = request.META.get("CONTENT_LENGTH") or ""
        length = int(header) if header.isdigit() else None
        content_range = request.META.get("HTTP_CONTENT_RANGE", "")
        if content_range:
            match = CONTENT_RANGE.match(content_range.strip())
            if match is None:
                raise ApplicationError("Content-Range is 'bytes START-END/TOTAL'.", field="offset")
            start, end = int(match[1]), int(match[2])
            if end < start or (length is not None and length != end - start + 1):
                raise ApplicationError("Content-Range does not match the chunk's length.", field="offset")
            return start, end - start + 1
        offset = request.query_params.get("offset", "")
        if not offset.isdigit() or len(offset) > 18:
            raise ApplicationError("Say where the chunk goes: ?offset=N or a Content-Range header.", field="offset")
        return int(offset), length

    @extend_schema(responses={204: None})
    def destroy(self, request, pk=None):
        """Drop the upload and what arrived of it."""
        services.upload_abort(actor=request.user, upload=self._upload())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=UploadCompleteSerializer, responses={201: VersionSerializer})
    @action(detail=True, methods=["post"])
    def complete(self, request, pk=None):
        """Hash and validate the file, then register it as the dataset's next version (201). Problems: 400 with
        the first `errors` by line and field, and nothing registered."""
        upload = self._upload()
        serializer = UploadCompleteSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            version = services.upload_complete(
                actor=request.user, upload=upload, sha256=serializer.validated_data.get("sha256", "")
            )
        except ApplicationError as error:
            return refusal(error)
        return Response(VersionSerializer(version).data, status=status.HTTP_201_CREATED)


class _Empty:
    def read(self, size: int = -1) -> bytes:
        return b""
