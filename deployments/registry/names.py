"""What an imported model may be called: the deployment-name rule (lowercase letters, digits and hyphens, at most
63), so a name is never markup and never cut; an empty name is made from the directory's name by the same rule."""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError
from django.core.validators import MaxLengthValidator

from deployments.serving.models import DEPLOYMENT_NAME

IMPORT_NAME_MAX = 63
IMPORT_NAME_VALIDATORS = [MaxLengthValidator(IMPORT_NAME_MAX), DEPLOYMENT_NAME]


def import_name(name: str, directory: str) -> str:
    """The name an import is registered under: the given one, checked (ValidationError), else one made from the
    directory's last part ("Llama_3.1-8B" -> "llama-3-1-8b"); empty when nothing usable is left."""
    if name:
        errors = []
        for validator in IMPORT_NAME_VALIDATORS:
            try:
                validator(name)
            except ValidationError as error:
                errors.extend(error.messages)
        if errors:
            raise ValidationError(errors)
        return name
    last = (directory or "").rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"[^a-z0-9]+", "-", last.lower()).strip("-")[:IMPORT_NAME_MAX].rstrip("-")
