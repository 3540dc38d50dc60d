"""The allow-list of server images deployments may run: adding and removing entries (deploy action)."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import transaction

import audit
from console import roles
from console.errors import ApplicationError
from console.permissions import require
from deployments.backends import BACKENDS
from deployments.models import AllowedImage, Deployment


def image_refused(*, image: str, default: str, host) -> str | None:
    """The image a server on `host` would run when it is not on the allow-list, else None. Containers run
    allowed images only (the backend's default too); a native process runs no image unless one is named."""
    if host.runtime != host.Runtime.DOCKER and not image:
        return None
    reference = image or default
    return None if AllowedImage.objects.filter(reference=reference).exists() else reference


def _repository(reference: str) -> str:
    """An image reference without its tag or digest (`vllm/vllm-openai:v0.34.0` -> `vllm/vllm-openai`)."""
    reference = reference.split("@", 1)[0]
    return reference.rsplit(":", 1)[0] if ":" in reference.rsplit("/", 1)[-1] else reference


def image_backend(reference: str) -> str:
    """The backend an image serves: the one whose default image comes from the same repository (TGI otherwise,
    the allow-list's default before there were two)."""
    for name, backend in BACKENDS.items():
        if _repository(backend.default_image) == _repository(reference):
            return name
    return "tgi"


@transaction.atomic
def image_allow(*, actor, reference: str, digest: str = "", note: str = "", backend: str = "") -> AllowedImage:
    """Put an image on the allow-list (pinned by digest when one is given)."""
    require(actor, roles.DEPLOY)
    reference, digest = reference.strip(), digest.strip()
    if AllowedImage.objects.filter(reference=reference).exists():
        raise ApplicationError(f"{reference} is already allowed.", field="reference")
    image = AllowedImage(
        reference=reference, digest=digest, note=note.strip(), backend=backend or image_backend(reference)
    )
    try:
        image.full_clean()
    except ValidationError as error:
        field, messages = next(iter(error.message_dict.items()))
        raise ApplicationError(" ".join(messages), field=field) from None
    image.save()
    audit.record(action="image.allowed", actor=actor, target=image, detail={"digest": image.digest})
    return image


@transaction.atomic
def image_remove(*, actor, image: AllowedImage) -> None:
    """Take an image off the allow-list. Specs keep their reference; launching one is refused until it is back."""
    require(actor, roles.DEPLOY)
    users = list(Deployment.objects.filter(spec__image=image.reference).values_list("name", flat=True))
    audit.record(action="image.removed", actor=actor, target=image, detail={"current_specs": users})
    image.delete()
