"""The session's inference gateway (tests/deployments/gateway/conftest.py) for the end-to-end tests here, declared
once for the package so its modules share one gateway process."""

from tests.deployments.gateway.conftest import gateway

__all__ = ["gateway"]
