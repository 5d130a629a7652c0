"""Shared fixtures of the integration tests (each talks to real services of the local stack)."""

from __future__ import annotations

import pytest

from streaming_analytics.settings import Settings


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis of the local stack (SA_REDIS_URL or the stack's endpoints). Never skipped:
    a test that needs Redis fails when it is unreachable."""
    return Settings.from_env().redis_url
