"""Fixtures of the Terraform tests: the parsed configuration and the deployment it describes."""

from __future__ import annotations

import pytest
from tfmodel import DeployedFunction, Grant, TfConfig, deployed_functions, grants


@pytest.fixture(scope="session")
def tf() -> TfConfig:
    return TfConfig()


@pytest.fixture(scope="session")
def functions(tf: TfConfig) -> dict[str, DeployedFunction]:
    return deployed_functions(tf)


@pytest.fixture(scope="session")
def iam(tf: TfConfig) -> list[Grant]:
    return grants(tf)
