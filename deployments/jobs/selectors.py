"""Reading a job's output: who may (the rule on its target, console.permissions.require_output_reader) and what
they see (a server's lines without what requests sent, unless they hold view_data). The API, the websocket and
the pages read logs through these, so the rule and the mask hold in one place."""

from __future__ import annotations

from django.apps import apps
from django.core.exceptions import PermissionDenied
from django.db.models import Model
from django.http import Http404

from console import roles
from console.permissions import can, require_output_reader
from deployments.backends import get_backend
from deployments.backends.base import Backend
from deployments.models import DeploymentSpec, Job, JobLogLine

SERVER_STREAM = "server"
LOOKBACK_LINES = 1000  # how far back a page looks for a prompt that began before it (multi-line debug output)


def job_target(job: Job) -> tuple[Model | None, type[Model] | None]:
    """The object a job works on (None when it is gone) and its model (None for a job on no object)."""
    if not job.target_type:
        return None, None
    try:
        model = apps.get_model(job.target_type)
    except (LookupError, ValueError):
        return None, None
    return model._default_manager.filter(pk=job.target_id).first(), model


def require_job_log(user, job: Job) -> None:
    """Raise (403, or 404 for a target the user may not see) unless the user may read this job's output."""
    target, model = job_target(job)
    require_output_reader(user, target, model=model)


def can_read_job_log(user, job: Job) -> bool:
    try:
        require_job_log(user, job)
    except (PermissionDenied, Http404):
        return False
    return True


class LogView:
    """A job's lines as one reader sees them, batch after batch (a multi-line prompt may span two batches)."""

    def __init__(self, job: Job, *, show_data: bool) -> None:
        self.job_id = job.pk
        self.masking = not show_data and job.kind == Job.Kind.SERVE
        self.backend = _backend(job) if self.masking else None
        self.carry = False

    def start_after(self, seq: int) -> None:
        """Read from seq + 1 on: learn whether the server lines before it leave request content open."""
        if not self.masking or seq <= 0:
            return
        before = JobLogLine.objects.filter(job_id=self.job_id, stream=SERVER_STREAM, seq__lte=seq).order_by("-seq")
        texts = list(before.values_list("text", flat=True)[:LOOKBACK_LINES])[::-1]
        _shown, self.carry = self.backend.mask_request_content(texts)

    def items(self, items: list[dict]) -> list[dict]:
        """The items (JobLogLine.as_item's shape) with server lines masked for this reader."""
        if not self.masking:
            return items
        server = [index for index, item in enumerate(items) if item.get("stream") == SERVER_STREAM]
        if not server:
            return items
        masked, self.carry = self.backend.mask_request_content([items[i]["text"] for i in server], carry=self.carry)
        shown = list(items)
        for index, text in zip(server, masked, strict=True):
            shown[index] = {**items[index], "text": text}
        return shown

    def text(self, text: str) -> str:
        """A block of server lines kept elsewhere (a failure's evidence), masked line by line."""
        if not self.masking or not text:
            return text
        masked, _carry = self.backend.mask_request_content(text.split("\n"))
        return "\n".join(masked)


def log_view(job: Job, *, user) -> LogView:
    """How this user sees this job's lines: a server's request content only with view_data."""
    return LogView(job, show_data=can(user, roles.VIEW_DATA))


def _backend(job: Job) -> Backend:
    spec = DeploymentSpec.objects.filter(pk=(job.params or {}).get("spec")).only("backend").first()
    try:
        return get_backend(spec.backend if spec else "")
    except KeyError:
        return get_backend("")
