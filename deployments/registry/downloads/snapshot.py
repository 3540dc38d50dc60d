"""Resolve: pin a revision of a Hub model repo to its commit and list its files, sizes and hashes."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import requests
from huggingface_hub import HfApi, ModelInfo, hf_hub_url
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled
from huggingface_hub.utils import get_session, hf_raise_for_status

from deployments.registry.downloads.errors import DownloadError, _hub_error, _network_error, _offline_error
from deployments.registry.downloads.hub import (
    CONNECT_TIMEOUT_S,
    LIBRARY_NAME,
    LIBRARY_VERSION,
    READ_TIMEOUT_S,
    RESOLVE_ATTEMPTS,
    _endpoint,
    _headers,
    _is_transient_status,
    _resolve_pause,
)
from deployments.registry.downloads.staging import _check_repo_path

_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class RemoteFile:
    """One file of a pinned revision, with what the Hub says about it (what the download is verified against)."""

    path: str
    size: int
    sha256: str | None  # LFS files: the content's sha256
    blob_id: str | None  # the git blob id: sha1 of "blob <size>\0" + content (of the pointer for LFS files)
    lfs: bool


@dataclass
class RepoSnapshot:
    """A repo at one commit: ``revision`` is what the user asked for, ``commit`` the sha it pointed at."""

    repo_id: str
    revision: str
    commit: str
    files: list[RemoteFile]
    gated: bool | str
    private: bool
    license: str | None
    provider: str = "hub"  # which API serves the files: "hub" (Hugging Face and its mirrors) or "modelscope"


def resolve(
    repo_id: str, revision: str | None, *, endpoint: str | None, token: str | None, kind: str = "hub"
) -> RepoSnapshot:
    """Pin ``revision`` (default "main") of a model repo to its commit sha and list its files with sizes and hashes.

    ``kind`` is the source's: "modelscope" speaks ModelScope's API (:mod:`.modelscope`), anything else the Hub's.

    Only the given ``token`` is sent: never a token stored on this machine, so what works here works in the job.
    For a gated repo, one file is probed with HEAD so a missing license acceptance shows now, not after a
    space check and hours of waiting.
    """
    if kind == "modelscope":
        from deployments.registry.downloads import modelscope

        return modelscope.resolve(repo_id, revision, endpoint=endpoint, token=token)
    revision = revision or "main"
    info = _model_info(repo_id, revision, endpoint=endpoint, token=token)
    commit = info.sha or ""
    if not _COMMIT_RE.match(commit) or info.siblings is None:
        raise DownloadError(
            f"The Hub did not return a commit and a file list for {repo_id}@{revision}.",
            cause="hub_metadata",
            next_step="Retry; if it persists, check that the endpoint is a Hugging Face Hub or a compatible mirror.",
        )
    files = [_remote_file(sibling, repo_id) for sibling in info.siblings]
    snapshot = RepoSnapshot(
        repo_id=repo_id,
        revision=revision,
        commit=commit,
        files=files,
        gated=info.gated or False,
        private=bool(info.private),
        license=_license(info),
    )
    if snapshot.gated and files:
        _probe_access(snapshot, endpoint=endpoint, token=token)
    return snapshot


def _model_info(repo_id: str, revision: str, *, endpoint: str | None, token: str | None) -> ModelInfo:
    """The Hub's metadata of the repo at ``revision``, with file metadata; a few tries on a transient failure."""
    api = HfApi(endpoint=endpoint, library_name=LIBRARY_NAME, library_version=LIBRARY_VERSION)
    attempt = 0
    while True:
        attempt += 1
        try:
            return api.model_info(repo_id, revision=revision, files_metadata=True, token=token or False)
        except HFValidationError as exc:
            raise DownloadError(
                f"{repo_id!r} is not a valid model id: {exc}",
                cause="invalid_repo_id",
                next_step="Use the id from the model page's address: owner/name, e.g. Qwen/Qwen2.5-7B-Instruct.",
                field="repo_id",
            ) from exc
        except HfHubHTTPError as exc:
            if not (_is_transient_status(exc.response) and attempt < RESOLVE_ATTEMPTS):
                raise _hub_error(exc, repo_id=repo_id, revision=revision, token=token, endpoint=endpoint) from exc
        except OfflineModeIsEnabled as exc:
            raise _offline_error() from exc
        except (requests.ConnectionError, requests.Timeout) as exc:
            if attempt >= RESOLVE_ATTEMPTS:
                raise _network_error(f"Could not reach the Hub at {_endpoint(endpoint)}: {exc}", endpoint) from exc
        except (KeyError, TypeError, ValueError) as exc:  # JSON that is not a Hub answer (no "id", a list...)
            raise DownloadError(
                f"{_endpoint(endpoint)} did not answer like a Hugging Face Hub for {repo_id}@{revision} ({exc!r}).",
                cause="hub_metadata",
                next_step="Check that the source's address is a Hugging Face Hub or a compatible mirror.",
                field="endpoint",
            ) from exc
        time.sleep(_resolve_pause(attempt))


def _remote_file(sibling: Any, repo_id: str) -> RemoteFile:
    path = sibling.rfilename
    _check_repo_path(path, repo_id)
    lfs = sibling.lfs
    size = sibling.size if sibling.size is not None else (lfs.size if lfs is not None else None)
    if size is None:
        raise DownloadError(
            f"The Hub did not report the size of {path} in {repo_id}.",
            cause="hub_metadata",
            next_step="Retry; a mirror must answer /api/models/<id>/revision/<rev>?blobs=true with sizes.",
        )
    return RemoteFile(
        path=path,
        size=int(size),
        sha256=lfs.sha256 if lfs is not None else None,
        blob_id=sibling.blob_id,
        lfs=lfs is not None,
    )


def _license(info: Any) -> str | None:
    card = getattr(info, "card_data", None)
    value = getattr(card, "license", None) if card is not None else None
    if value:
        return ", ".join(value) if isinstance(value, list) else str(value)
    for tag in info.tags or []:
        if isinstance(tag, str) and tag.startswith("license:"):
            return tag.split(":", 1)[1]
    return None


def _probe_access(snapshot: RepoSnapshot, *, endpoint: str | None, token: str | None) -> None:
    """HEAD one small file of a gated repo: the Hub shows gated repos' metadata to anyone, but not their files."""
    names = {f.path: f for f in snapshot.files}
    probe = names.get("config.json") or min(snapshot.files, key=lambda f: f.size)
    url = hf_hub_url(snapshot.repo_id, probe.path, revision=snapshot.commit, endpoint=endpoint)
    headers = _headers(token)
    try:
        # No redirect: on the Hub an LFS file redirects to the CDN, and the answer before it is enough.
        response = get_session().head(
            url, headers=headers, allow_redirects=False, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
        )
        hf_raise_for_status(response)
    except HfHubHTTPError as exc:
        if _is_transient_status(exc.response):
            return  # the download itself retries; do not fail the resolve on a hiccup
        raise _hub_error(
            exc, repo_id=snapshot.repo_id, revision=snapshot.revision, token=token, endpoint=endpoint, path=probe.path
        ) from exc
    except (requests.ConnectionError, requests.Timeout):
        return
