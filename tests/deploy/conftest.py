import pytest


def pytest_configure(config: pytest.Config) -> None:
    # pyproject.toml's list is not this task's to edit; the marker is registered where its tests live.
    config.addinivalue_line("markers", "slow: starts something big (the compose stack); runs once per CI run")
