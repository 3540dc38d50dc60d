"""Importing a dataset version from a Hub dataset repo: one file (JSONL, JSON, CSV or Parquet) at a commit.

The request resolves the revision to a commit and checks the file (it exists, its format, its size) through the
endpoint allow-list, with one sentence for each refusal; a `dataset_import` job on the console's own queue then
downloads it with the registry's download engine (resumable, verified against the Hub's sha256 or git blob id) and
registers it as the dataset's next version through the upload path (workers/handlers/dataset_import.py)."""

from __future__ import annotations

from pathlib import PurePosixPath

import requests
from django.conf import settings
from django.db import transaction
from django.utils.translation import gettext as _
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import (
    DisabledRepoError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

import audit
from console import roles
from console.accounts.models import Credential
from console.errors import ApplicationError
from console.permissions import require, require_dataset, require_dataset_manager
from deployments.datasets.models import Dataset
from deployments.datasets.services import EXTENSIONS
from deployments.jobs.services import job_cancel, job_create
from deployments.models import Job, ModelSource
from deployments.registry.downloads.hub import LIBRARY_NAME, LIBRARY_VERSION
from deployments.registry.endpoints import RedirectRefused, allow_listed_hops, check_url
from deployments.registry.network import source_unreachable
from deployments.registry.services import source_token

FORMATS = ", ".join(sorted({suffix for suffix in EXTENSIONS}))
FILES_NAMED = 5  # a missing file's error names this many of the repo's data files


def import_format(path: str) -> str:
    """The dataset format a repo file's name says; a field error for any other file."""
    found = EXTENSIONS.get(PurePosixPath(path).suffix.lower())
    if found is None:
        raise ApplicationError(
            _("%(path)s is not a dataset file this console reads: the name must end in %(formats)s.")
            % {"path": path, "formats": FORMATS},
            field="path",
        )
    return found


def _clean_path(path: str) -> str:
    path = path.strip().lstrip("/")
    parts = path.split("/")
    if not path or "\\" in path or "\0" in path or any(part in ("", ".", "..") for part in parts):
        raise ApplicationError(_("Give the file's path inside the repo, e.g. data/train.jsonl."), field="path")
    return path


def _clean_repo_id(repo_id: str) -> str:
    repo_id = repo_id.strip()
    if not repo_id or repo_id.count("/") > 1 or any(c in repo_id for c in " \\:?#"):
        raise ApplicationError(_("A dataset repo id looks like org/name."), field="repo_id")
    return repo_id


def hub_import_start(
    *,
    actor,
    dataset: Dataset,
    source: ModelSource,
    repo_id: str,
    revision: str = "main",
    path: str,
    credential: Credential | None = None,
) -> Job:
    """Import one file of a Hub dataset repo as the next version of `dataset` (manage_datasets on it). The revision is
    pinned to a commit now (a metadata call, outside any transaction); the job downloads exactly that commit's file
    and checks it against the Hub's hash."""
    require_dataset_manager(actor)
    require_dataset(actor, roles.MANAGE_DATASETS, dataset)
    if credential is not None:
        require(actor, roles.ADD_MODEL, credential)  # stored tokens are used by those who may add models
    if source.kind == ModelSource.Kind.LOCAL:
        raise ApplicationError(
            _("A local source has no Hub to import from; choose the Hub or a mirror."), field="source"
        )
    if source.kind == ModelSource.Kind.MODELSCOPE:
        raise ApplicationError(
            _("Datasets are imported from the Hub or a Hub-compatible mirror, not from ModelScope."), field="source"
        )
    repo_id, path, revision = _clean_repo_id(repo_id), _clean_path(path), revision.strip() or "main"
    fmt = import_format(path)
    token = source_token(source, credential)
    found = _resolve_file(source=source, repo_id=repo_id, revision=revision, path=path, token=token)
    limit = settings.DATASET_UPLOAD_MAX_BYTES
    if found["size"] > limit:
        raise ApplicationError(
            _("%(path)s is %(size)s bytes; DATASET_UPLOAD_MAX_BYTES allows at most %(limit)s.")
            % {"path": path, "size": found["size"], "limit": limit},
            field="path",
        )
    if found["size"] <= 0:
        raise ApplicationError(_("%(path)s is empty: a dataset needs rows.") % {"path": path}, field="path")
    params = {
        "dataset_id": dataset.pk,
        "source_id": source.pk,
        "source": source.name,
        "repo_id": repo_id,
        "revision": revision,
        "format": fmt,
        "credential_id": credential.pk if credential is not None else None,
        **found,
    }
    detail = {"source": source.name, "repo": repo_id, "revision": revision, "commit": found["commit"], "path": path}
    with transaction.atomic():
        same = hub_imports_active(dataset=dataset).filter(
            params__source_id=source.pk, params__repo_id=repo_id, params__commit=found["commit"], params__path=path
        )
        if same.exists():  # asked twice: the running import is the answer
            return same.first()
        if credential is not None:
            audit.record(action="secret.used", actor=actor, target=credential, detail={"purpose": "import a dataset"})
        job = job_create(
            kind=Job.Kind.DATASET_IMPORT, actor=actor, target=dataset, queue=settings.CONSOLE_QUEUE, params=params
        )
        detail.update(job=job.pk, size=found["size"])
        audit.record(action="dataset.import_requested", actor=actor, target=dataset, detail=detail)
    return job


def _resolve_file(*, source: ModelSource, repo_id: str, revision: str, path: str, token: str | None) -> dict:
    """{commit, path, size, sha256, blob_id, lfs} of the file at the commit `revision` points at; one sentence with
    the field at fault for anything else."""
    try:
        if source.endpoint:
            check_url(source.endpoint)
        # Someone waits: connections wait HUB_CONNECT_TIMEOUT at most, every hop is checked against the allow-list.
        with allow_listed_hops(interactive=True):
            api = HfApi(endpoint=source.url, library_name=LIBRARY_NAME, library_version=LIBRARY_VERSION)
            info = api.dataset_info(repo_id, revision=revision, files_metadata=True, token=token or False)
            commit = info.sha or ""
            siblings = {sibling.rfilename: sibling for sibling in info.siblings or []}
            sibling = siblings.get(path)
            if sibling is None:
                raise _missing_file(repo_id, commit or revision, path, siblings)
            if info.gated:
                # The Hub shows a gated repo's file list to anyone, not its files: ask for this one now.
                url = hf_hub_url(repo_id, path, repo_type="dataset", revision=commit, endpoint=source.url)
                get_hf_file_metadata(url, token=token or False, timeout=settings.HUB_CONNECT_TIMEOUT + 10)
    except ApplicationError as error:
        if error.field == "endpoint" or isinstance(error, RedirectRefused):
            raise ApplicationError(error.message, field="source") from None
        raise
    except HFValidationError:
        raise ApplicationError(_("A dataset repo id looks like org/name."), field="repo_id") from None
    except HfHubHTTPError as exc:
        raise _hub_refusal(exc, repo_id=repo_id, revision=revision, token=token, source=source) from None
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise (source_unreachable(exc, url=source.url) or ApplicationError(str(exc), field="source")) from None
    if len(commit) != 40 or sibling.size is None:
        raise ApplicationError(
            _("%(url)s did not answer like a Hugging Face Hub for %(repo)s (no commit or no file size).")
            % {"url": source.url, "repo": repo_id},
            field="source",
        )
    lfs = sibling.lfs
    return {
        "commit": commit,
        "path": path,
        "size": int(sibling.size),
        "sha256": lfs.sha256 if lfs is not None else "",
        "blob_id": sibling.blob_id or "",
        "lfs": lfs is not None,
    }


def _missing_file(repo_id: str, commit: str, path: str, siblings: dict) -> ApplicationError:
    data = [name for name in sorted(siblings) if PurePosixPath(name).suffix.lower() in EXTENSIONS]
    listed = ", ".join(data[:FILES_NAMED]) + (" …" if len(data) > FILES_NAMED else "")
    message = _("%(repo)s@%(commit)s has no file %(path)s.") % {"repo": repo_id, "commit": commit[:12], "path": path}
    if listed:
        message += " " + _("Its data files: %(files)s.") % {"files": listed}
    return ApplicationError(message, field="path")


def _hub_refusal(exc: HfHubHTTPError, *, repo_id: str, revision: str, token: str | None, source) -> ApplicationError:
    """What the Hub's answer means for this form, on the field to change."""
    page = f"{source.url}/datasets/{repo_id}"
    # GatedRepoError is a RepositoryNotFoundError: test it first.
    if isinstance(exc, GatedRepoError):
        return ApplicationError(
            _(
                "%(repo)s is a gated dataset: accept its conditions at %(page)s with the account whose token the "
                "console uses, and choose that token."
            )
            % {"repo": repo_id, "page": page},
            field="credential",
        )
    if isinstance(exc, RevisionNotFoundError):
        return ApplicationError(
            _("%(repo)s has no revision %(revision)s; use a branch, tag or commit that exists.")
            % {"repo": repo_id, "revision": revision},
            field="revision",
        )
    if isinstance(exc, DisabledRepoError):
        return ApplicationError(_("%(repo)s is disabled on the Hub.") % {"repo": repo_id}, field="repo_id")
    if isinstance(exc, RepositoryNotFoundError):
        hint = _("If it is private, choose a token that can read it.") if not token else ""
        return ApplicationError(
            (_("No dataset %(repo)s on %(source)s.") % {"repo": repo_id, "source": source.name} + " " + hint).strip(),
            field="repo_id",
        )
    status = exc.response.status_code if exc.response is not None else None
    if status in (401, 403):
        return ApplicationError(
            _("The Hub refused the token for %(repo)s (HTTP %(status)s): choose a valid read token.")
            % {"repo": repo_id, "status": status},
            field="credential",
        )
    return ApplicationError(
        _("%(source)s answered HTTP %(status)s for %(repo)s; try again later.")
        % {"source": source.name, "status": status, "repo": repo_id},
        field="source",
    )


@transaction.atomic
def hub_import_cancel(*, actor, dataset: Dataset, job: Job) -> Job:
    """Stop an import of `dataset` (manage_datasets on it); what was downloaded is dropped and nothing registered."""
    require_dataset(actor, roles.MANAGE_DATASETS, dataset)
    if job.kind != Job.Kind.DATASET_IMPORT or job.target_id != str(dataset.pk):
        raise ApplicationError(_("That job is not an import of this dataset."), field="job")
    # The dataset rule was checked just above (stewards hold manage_datasets through their team, which
    # job_cancel's generic check does not know); job_cancel only needs the actor to see jobs.
    return job_cancel(actor=actor, job=job, action=roles.VIEW)


def hub_imports_active(*, dataset: Dataset):
    """The imports of `dataset` still queued or running, oldest first."""
    return Job.objects.filter(
        kind=Job.Kind.DATASET_IMPORT,
        target_type=Dataset._meta.label_lower,
        target_id=str(dataset.pk),
        status__in=Job.Status.active(),
    ).order_by("pk")
