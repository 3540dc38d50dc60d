"""The further servers of a deployment whose spec asks for several replicas.

Replica 0 is the deployment itself: its own fields (host, GPUs, job, endpoint, server key, state, restarts) keep
describing one server, as they always have, so every single-server path (the serve job, the reconciler, the
playground, stop and restart, the pages) works unchanged. Replicas 1..N-1 are rows of DeploymentReplica with the
same server fields under the same names, each placed on GPUs of its own by the one placement engine, launched by
its own serve job, failed and restarted on its own. deployments/serving/replicas.py sums them up: a deployment
serves while any of its servers runs ("2/3 replicas running"), and the gateway routes to every running one.
"""

from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils.translation import gettext_lazy as _

from deployments.inventory.models import Host
from deployments.serving.models import Deployment, ServerFields

# The runtime label that finds a replica's server again (its value: the replica's id). Replica servers carry no
# deployment label, so the deployment's own serve job and the reconciler's one-server-per-deployment rule never
# mistake them for a stale copy of server 0.
LABEL_REPLICA = "llmdeploy.replica"


class DeploymentReplica(ServerFields):
    """Server `index` (1..7) of a deployment; server 0 is the deployment's own. The server fields are the
    deployment's (ServerFields), so the serve job watches either through the same code."""

    State = Deployment.State

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="replicas")
    index = models.PositiveSmallIntegerField(_("replica"), validators=[MinValueValidator(1), MaxValueValidator(7)])
    state = models.CharField(
        _("state"), max_length=12, choices=Deployment.State.choices, default=Deployment.State.STOPPED, db_index=True
    )
    state_changed_at = models.DateTimeField(_("state since"), auto_now_add=True)
    deadline = models.DateTimeField(_("deadline"), null=True, blank=True)
    host = models.ForeignKey(
        Host, verbose_name=_("host"), null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    endpoint = models.CharField(_("endpoint"), max_length=200, blank=True)

    class Meta:
        ordering = ["deployment", "index"]
        default_permissions = ()
        constraints = [models.UniqueConstraint(fields=["deployment", "index"], name="replica_unique_index")]

    def __str__(self) -> str:
        return f"{self.deployment.name} replica {self.index}"

    @property
    def name(self) -> str:
        return f"{self.deployment.name}-r{self.index}"

    @property
    def instance(self) -> str:
        """The server's name on its host (container or process), unlike any other server's."""
        return f"llmdeploy-{self.deployment_id}-r{self.index}-{self.deployment.name}"[:63]

    @property
    def holder(self) -> str:
        """How this replica's GPU reservations and artifact use are named."""
        return f"deployment:{self.deployment_id}:replica:{self.index}"

    @property
    def labels(self) -> dict[str, str]:
        return {"llmdeploy.managed": "true", LABEL_REPLICA: str(self.pk), "llmdeploy.name": self.name}

    # The serve job reads the spec through its server record, as it does on a deployment.
    @property
    def spec(self):
        return self.deployment.spec

    @property
    def spec_id(self) -> int | None:
        return self.deployment.spec_id

    @property
    def where(self) -> str:
        """Where it runs, e.g. "GPU 1 on h1" or "CPU on vm" (for people and for the gateway's labels)."""
        if self.host_id is None:
            return ""
        if self.gpu_indexes:
            return f"GPU {','.join(map(str, self.gpu_indexes))} on {self.host.name}"
        return f"CPU on {self.host.name}"
