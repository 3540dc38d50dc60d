"""Models of the deployments app: inventory, model registry, jobs, deployments, datasets."""

from deployments.benchmarks.models import BenchmarkAlert, BenchmarkRun, BenchmarkSchedule, BenchmarkStep
from deployments.datasets.models import Dataset, DatasetUpload, DatasetVersion
from deployments.finetune.models import Checkpoint
from deployments.gateway.models import (
    InferenceBatch,
    InferenceKey,
    InferenceRecord,
    ServiceAccount,
    TeamQuota,
    UsageDay,
)
from deployments.inventory.models import HOST_NAME, Gpu, GpuReservation, Host
from deployments.jobs.models import Job, JobLogLine
from deployments.monitoring.models import DeploymentSample, GpuSample, HealthCheckRun
from deployments.quality.models import EvalResult
from deployments.registry.models import AllowedEndpoint, ArtifactUse, ModelArtifact, ModelRepo, ModelSource
from deployments.serving.approvals_models import ApprovalRequest
from deployments.serving.models import AllowedImage, Deployment, DeploymentSpec
from deployments.serving.replica_models import DeploymentReplica

__all__ = [
    "HOST_NAME",
    "AllowedEndpoint",
    "AllowedImage",
    "ApprovalRequest",
    "ArtifactUse",
    "BenchmarkAlert",
    "BenchmarkRun",
    "BenchmarkSchedule",
    "BenchmarkStep",
    "Checkpoint",
    "Dataset",
    "DatasetUpload",
    "DatasetVersion",
    "Deployment",
    "DeploymentReplica",
    "DeploymentSample",
    "DeploymentSpec",
    "EvalResult",
    "Gpu",
    "GpuReservation",
    "GpuSample",
    "HealthCheckRun",
    "Host",
    "InferenceBatch",
    "InferenceKey",
    "InferenceRecord",
    "Job",
    "JobLogLine",
    "ModelArtifact",
    "ModelRepo",
    "ModelSource",
    "ServiceAccount",
    "TeamQuota",
    "UsageDay",
]
