"""What can go wrong in a download, said so a user can act on it: the Hub's, the network's and the disk's errors."""

from __future__ import annotations

import errno
from pathlib import Path

from huggingface_hub.errors import (
    DisabledRepoError,
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from deployments.registry.downloads.hub import _endpoint


class DownloadError(Exception):
    """A download failed for a reason the user can act on.

    ``cause`` is a short machine code ("gated", "unauthorized", "revision_not_found", "repo_not_found",
    "no_space", "checksum_mismatch", "network", "cancelled", "invalid_layout", "exists", ...), ``message`` says
    what happened, ``next_step`` what to do about it, ``field`` which input it is about (for forms), if any.
    """

    def __init__(self, message: str, *, cause: str, next_step: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.cause = cause
        self.next_step = next_step
        self.field = field

    def as_dict(self) -> dict[str, str | None]:
        """The error as the job runner stores it."""
        return {"cause": self.cause, "message": self.message, "next_step": self.next_step, "field": self.field}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(cause={self.cause!r}, message={self.message!r})"


class Cancelled(DownloadError):
    """``should_cancel()`` said stop. Partial files stay: a new download resumes them, :func:`discard` drops them."""

    def __init__(
        self,
        message: str = "The download was cancelled.",
        *,
        cause: str = "cancelled",
        next_step: str = "Start it again to resume from the bytes already on disk, or discard the partial files.",
        field: str | None = None,
    ):
        super().__init__(message, cause=cause, next_step=next_step, field=field)


class _Transient(Exception):
    """A failure worth retrying; ``retry_after`` is the server's hint in seconds, if it gave one."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _Mismatch(Exception):
    """The bytes received are not the file the commit names."""


def _network_error(detail: str, endpoint: str | None) -> DownloadError:
    return DownloadError(
        detail,
        cause="network",
        next_step=f"Check that this server can reach {_endpoint(endpoint)} (proxy, firewall, DNS), then retry.",
    )  # whether bytes were kept for a resume, the job knows (it looks at the staging directory)


def _offline_error() -> DownloadError:
    return DownloadError(
        "huggingface_hub is in offline mode (HF_HUB_OFFLINE is set) on this server.",
        cause="offline",
        next_step="Unset HF_HUB_OFFLINE for the worker, or import the model from a local directory.",
    )


def _disk_error(exc: OSError, path: str, staging: Path) -> DownloadError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DownloadError(
            f"The disk filled up while writing {path} in {staging}.",
            cause="no_space",
            next_step="Free space on that disk and retry; the bytes already written are kept and resumed.",
        )
    return DownloadError(
        f"Could not write {path} in {staging}: {exc.strerror or exc}.",
        cause="io_error",
        next_step="Check the disk and the permissions of the data directory, then retry.",
    )


# --------------------------------------------------------------------------------------------------------------
# The Hub's answers


def _hub_error(
    exc: HfHubHTTPError,
    *,
    repo_id: str,
    revision: str,
    token: str | None,
    endpoint: str | None,
    path: str | None = None,
) -> DownloadError:
    """Turn what ``hf_raise_for_status`` raised into a message and a next step a user can follow."""
    page = f"{_endpoint(endpoint)}/{repo_id}"
    # GatedRepoError is a RepositoryNotFoundError: the order of these checks matters.
    if isinstance(exc, GatedRepoError):
        return _gated_error(repo_id, page, token)
    if isinstance(exc, RevisionNotFoundError):
        return DownloadError(
            f"{repo_id} has no revision {revision!r}.",
            cause="revision_not_found",
            next_step=f"Use a branch, tag or full commit sha that exists (see {page}/tree/main), or leave the "
            "revision empty for main.",
            field="revision",
        )
    if isinstance(exc, EntryNotFoundError):
        return DownloadError(
            f"{path or 'A file'} is listed in {repo_id}@{revision} but the Hub cannot serve it.",
            cause="file_not_found",
            next_step="Retry later, or exclude that file, or choose another revision.",
        )
    if isinstance(exc, DisabledRepoError):
        return DownloadError(
            f"{repo_id} has been disabled on the Hub.",
            cause="repo_disabled",
            next_step="Choose another model.",
            field="repo_id",
        )
    if isinstance(exc, RepositoryNotFoundError):
        return _repo_not_found_error(repo_id, token)
    return _status_error(exc, repo_id=repo_id, endpoint=endpoint)


def _gated_error(repo_id: str, page: str, token: str | None) -> DownloadError:
    if token:
        return DownloadError(
            f"{repo_id} is a gated model and the stored token's account has not been granted access to it.",
            cause="gated",
            next_step=f"Open {page} signed in as the token's owner and accept the license (some authors approve "
            "requests by hand), or store a token of an account that has access; then retry.",
            field="token",
        )
    return DownloadError(
        f"{repo_id} is a gated model: downloading it needs a token of an account that accepted its license.",
        cause="gated",
        next_step=f"Accept the license on the Hub at {page}, create a read token at "
        "https://huggingface.co/settings/tokens, store the token in the console and retry.",
        field="token",
    )


def _repo_not_found_error(repo_id: str, token: str | None) -> DownloadError:
    if token:
        hint = "If it is private, check that the token's account (or organisation) can read it."
    else:
        hint = "If it is private, store a token of an account that can read it."
    return DownloadError(
        f"No model {repo_id!r} on the Hub{' that the stored token can see' if token else ''}.",
        cause="repo_not_found",
        next_step=f"Check the id (owner/name, as in the model page's address). {hint}",
        field="repo_id",
    )


def _status_error(exc: HfHubHTTPError, *, repo_id: str, endpoint: str | None) -> DownloadError:
    """An HTTP error the Hub gave no specific error class for, by its status code."""
    status = exc.response.status_code if exc.response is not None else None
    if status == 401:
        return DownloadError(
            "The Hub rejected the stored token (invalid, expired or revoked).",
            cause="unauthorized",
            next_step="Create a read token at https://huggingface.co/settings/tokens, store it in the console and "
            "retry.",
            field="token",
        )
    if status == 403:
        return DownloadError(
            f"The stored token is not allowed to read {repo_id}.",
            cause="unauthorized",
            next_step="Give the token read access to this repository (fine-grained tokens list the repos they may "
            "read, and need 'access public gated repos' for gated ones), or store a read token.",
            field="token",
        )
    if status == 429:
        return DownloadError(
            "The Hub is rate-limiting this server.",
            cause="rate_limited",
            next_step="Wait a few minutes and retry; requests with a token get higher limits.",
        )
    if status is not None and status >= 500:
        return _network_error(f"The Hub answered HTTP {status} for {repo_id}.", endpoint)
    return DownloadError(
        f"The Hub refused the request for {repo_id} (HTTP {status}): {getattr(exc, 'server_message', None) or exc}",
        cause="hub_error",
        next_step="Check the model id, revision and token, then retry.",
    )
