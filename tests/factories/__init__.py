"""factory_boy factories for the suite, one module per domain; import them from here."""

from tests.factories.accounts import PASSWORD, CredentialFactory, TeamFactory, UserFactory
from tests.factories.inventory import GpuFactory, HostFactory
from tests.factories.jobs import JobFactory
from tests.factories.registry import ModelArtifactFactory, ModelRepoFactory, ModelSourceFactory
from tests.factories.serving import DeploymentFactory, DeploymentSpecFactory

__all__ = [
    "PASSWORD",
    "CredentialFactory",
    "DeploymentFactory",
    "DeploymentSpecFactory",
    "GpuFactory",
    "HostFactory",
    "JobFactory",
    "ModelArtifactFactory",
    "ModelRepoFactory",
    "ModelSourceFactory",
    "TeamFactory",
    "UserFactory",
]
