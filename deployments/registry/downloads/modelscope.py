"""ModelScope: pin a revision of a ModelScope model repo to its commit and list its files, over its HTTP API.

The routes are those the ``modelscope`` SDK's ``HubApi`` calls (the SDK itself is not a dependency: it brings a
large tree of packages, and the engine only needs three GETs):

* ``GET /api/v1/models/{owner}/{name}/revisions``: ``Data.RevisionMap.Branches`` and ``.Tags``, entries with
  ``Revision`` (the name) and ``CommitId`` (the sha it points at);
* ``GET /api/v1/models/{owner}/{name}/repo/files?Revision=<commit>&Recursive=True``: ``Data.Files``, entries with
  ``Path``, ``Type`` ("blob" or "tree"), ``Size`` and ``Sha256`` (what each file is verified against);
* ``GET /api/v1/models/{owner}/{name}/repo?Revision=<commit>&FilePath=<path>``: the file, ``Range`` honoured.

Answers are ``{"Code": 200, "Success": true, "Data": ...}``; a failure carries ``Code`` and ``Message``.
A private repo needs the account's SDK token: the SDK sends it as the ``m_session_id`` cookie (and as
``Authorization: Bearer`` to its newer routes); both are sent here.
"""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import quote, urlencode

import requests
from huggingface_hub.utils import get_session

from deployments.registry.downloads.errors import DownloadError, _network_error
from deployments.registry.downloads.hub import (
    CONNECT_TIMEOUT_S,
    LIBRARY_NAME,
    LIBRARY_VERSION,
    READ_TIMEOUT_S,
    RESOLVE_ATTEMPTS,
    _is_transient_status,
    _resolve_pause,
)
from deployments.registry.downloads.snapshot import RemoteFile, RepoSnapshot
from deployments.registry.downloads.staging import _check_repo_path

DEFAULT_ENDPOINT = "https://www.modelscope.cn"
PROVIDER = "modelscope"
DEFAULT_BRANCH = "master"  # ModelScope's default branch; "main" (the form's default) falls back to it
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
LISTING_CAP = 3000  # repo/files answers at most this many entries, silently cut (the SDK's REPO_FILES_TRUNCATION_LIMIT)
_SKIPPED = {".gitattributes", ".gitignore"}  # the SDK skips these too: repo plumbing, not model files


def headers(token: str | None) -> dict[str, str]:
    """What every ModelScope request carries: who asks, and the token (cookie and bearer) when there is one."""
    found = {"User-Agent": f"{LIBRARY_NAME}/{LIBRARY_VERSION}"}
    if token:
        found["Cookie"] = f"m_session_id={token}"
        found["Authorization"] = f"Bearer {token}"
    return found


def _base(endpoint: str | None) -> str:
    return (endpoint or DEFAULT_ENDPOINT).rstrip("/")


def _model_path(repo_id: str) -> str:
    return "/".join(quote(part, safe="") for part in repo_id.split("/"))


def file_url(repo_id: str, path: str, *, commit: str, endpoint: str | None) -> str:
    """The download address of ``path`` at ``commit``."""
    query = urlencode({"Revision": commit, "FilePath": path})
    return f"{_base(endpoint)}/api/v1/models/{_model_path(repo_id)}/repo?{query}"


def resolve(repo_id: str, revision: str | None, *, endpoint: str | None, token: str | None) -> RepoSnapshot:
    """Pin ``revision`` (a branch, a tag or a commit; "main" means ModelScope's "master" when the repo has no
    "main") to its commit, and list the files at that commit with their sizes and sha256."""
    revision = revision or DEFAULT_BRANCH
    if "/" not in repo_id or repo_id.count("/") > 1:
        raise DownloadError(
            f"{repo_id!r} is not a valid ModelScope model id.",
            cause="invalid_repo_id",
            next_step="Use the id from the model page's address: owner/name, e.g. Qwen/Qwen2.5-7B-Instruct.",
            field="repo_id",
        )
    commit = _commit_of(repo_id, revision, endpoint=endpoint, token=token)
    query = urlencode({"Revision": commit, "Recursive": "True"})
    data = _get(f"/api/v1/models/{_model_path(repo_id)}/repo/files?{query}", repo_id, revision, endpoint, token)
    entries = _entries(data)
    if entries is None:
        raise _not_modelscope(endpoint, repo_id, revision, "no file list")
    if len(entries) >= LISTING_CAP:
        # A cut list would publish a model without some of its files: refuse instead of guessing.
        raise DownloadError(
            f"{repo_id}@{revision} lists {len(entries)} entries, the most {_base(endpoint)} answers in one list: "
            "the list may be incomplete.",
            cause="hub_metadata",
            next_step="Download this model elsewhere and import its directory, or use a Hub mirror of it.",
        )
    files = [_remote_file(entry, repo_id, endpoint) for entry in entries if _is_model_file(entry)]
    return RepoSnapshot(
        repo_id=repo_id,
        revision=revision,
        commit=commit,
        files=files,
        gated=False,
        private=False,  # the listing does not say; nothing downstream reads it
        license=None,
        provider=PROVIDER,
    )


def _commit_of(repo_id: str, revision: str, *, endpoint: str | None, token: str | None) -> str:
    data = _get(f"/api/v1/models/{_model_path(repo_id)}/revisions", repo_id, revision, endpoint, token)
    revision_map = data.get("RevisionMap") if isinstance(data, dict) else None
    if not isinstance(revision_map, dict):
        raise _not_modelscope(endpoint, repo_id, revision, "no RevisionMap")
    named = {
        entry.get("Revision"): entry.get("CommitId")
        for group in ("Branches", "Tags")
        for entry in revision_map.get(group) or []
        if isinstance(entry, dict) and entry.get("Revision")
    }
    if revision == "main" and "main" not in named:
        revision = DEFAULT_BRANCH
    if revision not in named:
        if _COMMIT_RE.match(revision):
            return revision  # already a commit: the file list at it says whether it exists
        raise DownloadError(
            f"{repo_id} has no revision {revision!r} on {_base(endpoint)}.",
            cause="revision_not_found",
            next_step="Use a branch or tag listed on the model's page (ModelScope's default branch is master), "
            "or a full commit id.",
            field="revision",
        )
    commit = named[revision]
    if commit is None:
        commit = _newest_file_commit(repo_id, revision, endpoint=endpoint, token=token)
    if not isinstance(commit, str) or not _COMMIT_RE.match(commit):
        raise _not_modelscope(endpoint, repo_id, revision, f"revision {revision!r} names no commit")
    return commit


def _newest_file_commit(repo_id: str, revision: str, *, endpoint: str | None, token: str | None) -> str | None:
    """The commit a branch or tag points at when the revision list does not say (it is documented to carry only
    ``Revision`` and ``CreatedAt``): every file entry names the last commit that touched it, and the newest of
    those is the head (a commit touches at least one file)."""
    query = urlencode({"Revision": revision, "Recursive": "True"})
    data = _get(f"/api/v1/models/{_model_path(repo_id)}/repo/files?{query}", repo_id, revision, endpoint, token)
    entries = [e for e in _entries(data) or [] if isinstance(e, dict)]
    dated = [
        (e.get("CommittedDate") or 0, e.get("CommitId") or e.get("Revision"))
        for e in entries
        if isinstance(e.get("CommitId") or e.get("Revision"), str)
    ]
    return max(dated, key=lambda item: item[0] if isinstance(item[0], int | float) else 0)[1] if dated else None


def _entries(data: Any) -> list | None:
    """The file list of a repo/files answer: ``Data.Files``, or ``Data`` itself as some servers give it."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        return data.get("Files") or []
    return None


def _is_model_file(entry: Any) -> bool:
    return isinstance(entry, dict) and entry.get("Type") != "tree" and entry.get("Name") not in _SKIPPED


def _remote_file(entry: dict, repo_id: str, endpoint: str | None) -> RemoteFile:
    path = entry.get("Path")
    size = entry.get("Size")
    sha256 = entry.get("Sha256")
    if not isinstance(path, str) or not isinstance(size, int) or not isinstance(sha256, str) or len(sha256) != 64:
        # Without a size and a sha256 there is nothing to verify the bytes against: refuse rather than trust.
        raise _not_modelscope(endpoint, repo_id, "", f"no size or sha256 for {path!r}")
    _check_repo_path(path, repo_id)
    return RemoteFile(path=path, size=size, sha256=sha256.lower(), blob_id=None, lfs=bool(entry.get("IsLFS")))


def _get(route: str, repo_id: str, revision: str, endpoint: str | None, token: str | None) -> Any:
    """GET a JSON route (a few tries on a transient failure); its ``Data``."""
    url = f"{_base(endpoint)}{route}"
    attempt = 0
    while True:
        attempt += 1
        try:
            response = get_session().get(url, headers=headers(token), timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
        except (requests.ConnectionError, requests.Timeout) as exc:
            if attempt >= RESOLVE_ATTEMPTS:
                raise _network_error(f"Could not reach ModelScope at {_base(endpoint)}: {exc}", endpoint) from exc
        else:
            if not (_is_transient_status(response) and attempt < RESOLVE_ATTEMPTS):
                return _data(response, repo_id, revision, endpoint, token)
        time.sleep(_resolve_pause(attempt))


def _data(response: requests.Response, repo_id: str, revision: str, endpoint: str | None, token: str | None) -> Any:
    try:
        body = response.json()
    except ValueError:
        body = None
    message = body.get("Message", "") if isinstance(body, dict) else ""
    status = response.status_code
    if status in (401, 403):
        raise DownloadError(
            f"{_base(endpoint)} refused {'the token' if token else 'a request without a token'} for {repo_id} "
            f"(HTTP {status}). {message}".strip(),
            cause="unauthorized",
            next_step="Give the source (or the download) a current ModelScope SDK token of an account that can see "
            "the model.",
            field="token",
        )
    if status == 404:
        # ModelScope answers a private model it does not show to this token (or to no token) as not found.
        seen = " that the token can see" if token else ""
        raise DownloadError(
            f"No model {repo_id}@{revision} on {_base(endpoint)}{seen}: it is private or does not exist. "
            f"{message}".strip(),
            cause="repo_not_found",
            next_step="Check the model id and the revision; for a private model give the source (or the download) "
            "a ModelScope SDK token of an account that can see it.",
            field="repo_id",
        )
    if status >= 400:
        raise DownloadError(
            f"{_base(endpoint)} answered HTTP {status} for {repo_id}. {message}".strip(),
            cause="rate_limited" if status == 429 else "hub_error",
            next_step="Retry later; if it persists, check the source's address.",
        )
    if not isinstance(body, dict) or "Data" not in body or body.get("Success") is False:
        raise _not_modelscope(endpoint, repo_id, revision, message or "no Data")
    return body["Data"]


def file_error(response: requests.Response, *, repo_id: str, path: str, endpoint: str | None, token: str | None):
    """What a refused file request (HTTP 4xx other than 416 and 429) means, said for ModelScope."""
    status = response.status_code
    if status in (401, 403):
        return DownloadError(
            f"{_base(endpoint)} refused {path} of {repo_id} (HTTP {status}): the token is missing, expired or of "
            "an account that cannot see the model.",
            cause="unauthorized",
            next_step="Give the source (or the download) a current ModelScope SDK token of an account that can see "
            "the model, then retry.",
            field="token",
        )
    # A private model's files answer 404 to a token that no longer sees it, as a vanished file does.
    return DownloadError(
        f"{path} is listed in {repo_id} but {_base(endpoint)} does not serve it (HTTP {status}).",
        cause="file_not_found" if status == 404 else "hub_error",
        next_step="If the model is private, check that the source's ModelScope SDK token is still valid; otherwise "
        "retry later, exclude that file, or choose another revision.",
    )


def _not_modelscope(endpoint: str | None, repo_id: str, revision: str, detail: str) -> DownloadError:
    at = f"{repo_id}@{revision}" if revision else repo_id
    return DownloadError(
        f"{_base(endpoint)} did not answer like ModelScope for {at} ({detail}).",
        cause="hub_metadata",
        next_step="Check that the source's address is ModelScope or a ModelScope-compatible mirror.",
        field="endpoint",
    )
