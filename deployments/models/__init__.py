"""Models of the deployments app: inventory, model registry, jobs, deployments."""

from deployments.models.deployments import AllowedImage, Deployment, DeploymentSpec
from deployments.models.inventory import HOST_NAME, Gpu, GpuReservation, Host
from deployments.models.jobs import Job, JobLogLine
from deployments.models.registry import AllowedEndpoint, ArtifactUse, ModelArtifact, ModelRepo, ModelSource

__all__ = [
    "HOST_NAME",
    "AllowedEndpoint",
    "AllowedImage",
    "ArtifactUse",
    "Deployment",
    "DeploymentSpec",
    "Gpu",
    "GpuReservation",
    "Host",
    "Job",
    "JobLogLine",
    "ModelArtifact",
    "ModelRepo",
    "ModelSource",
]
