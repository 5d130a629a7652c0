"""Shared fixtures. Tests under tests/unit are marked `unit`, those under tests/integration
`integration` (see pyproject.toml for the markers); integration tests use the stack that
`make test` started (scripts/test.sh) and find it through the settings module."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import pytest

from streaming_analytics.settings import Settings

TESTS = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath))
        if TESTS / "unit" in path.parents:
            item.add_marker(pytest.mark.unit)
        elif TESTS / "integration" in path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding anomaly model v1, trained once per session (~7 s)."""
    from models.train import ensure_model

    directory = tmp_path_factory.mktemp("models")
    ensure_model(directory)
    return directory


@pytest.fixture(scope="session")
def settings(model_dir: Path) -> Settings:
    """The effective configuration (the test stack's endpoints under `make test`), with a model
    directory of the session's own, so jobs under test never depend on var/models."""
    return dataclasses.replace(Settings.from_env(), model_dir=model_dir)


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A name no other test (or earlier run) uses, for topics, tables and stream keys."""
    stem = "".join(ch if ch.isalnum() else "_" for ch in request.node.name)[:40]
    return f"t_{stem}_{uuid.uuid4().hex[:8]}".lower()
