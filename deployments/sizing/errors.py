"""The one exception the planner raises, carrying which input it is about."""

from __future__ import annotations


class SizingError(Exception):
    """A sizing request that cannot be answered; `field` names the input at fault (for forms and APIs)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return self.message
