"""Refusals of the upload path that are not plain 400s: too large (413) and out of order (409)."""

from __future__ import annotations

from console.errors import ApplicationError


class UploadTooLarge(ApplicationError):
    """413: the file or the chunk is over its limit; the message names the limit."""

    status = 413


class UploadConflict(ApplicationError):
    """409: a chunk for another offset than the one the upload stands at; `received` says where to resume."""

    status = 409

    def __init__(self, message: str, *, received: int) -> None:
        super().__init__(message, field="offset")
        self.received = received


class DatasetInvalid(ApplicationError):
    """400: the file is not a dataset; `errors` are the first problems by line and field (never a value)."""

    def __init__(self, message: str, *, errors: list[dict], error_count: int) -> None:
        super().__init__(message, field="file")
        self.errors, self.error_count = errors, error_count
