"""The one exception the planner raises, carrying which input it is about."""

from __future__ import annotations

from collections.abc import Callable


def gettext_noop(message: str) -> str:
    """Marks a message for translation (makemessages finds it by this name) while this package imports no Django:
    the console translates `SizingError.template` where it shows the error (`SizingError.text`)."""
    return message


class SizingError(Exception):
    """A sizing request that cannot be answered; `field` names the input at fault (for forms and APIs). A message
    marked with gettext_noop keeps its values apart (`params`), so it can be shown in the reader's language."""

    def __init__(self, message: str, field: str | None = None, **params: object) -> None:
        self.template, self.params = message, params
        self.message = message % params if params else message
        super().__init__(self.message)
        self.field = field

    def __str__(self) -> str:
        return self.message

    def text(self, translate: Callable[[str], str]) -> str:
        """The message through `translate` (Django's gettext in the console)."""
        template = translate(self.template)
        return template % self.params if self.params else template
