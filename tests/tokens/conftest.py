"""Fixtures for the token tests."""

from __future__ import annotations

import pytest

from sidecar.clock import ManualClock
from tests.support.sessions import NOW


@pytest.fixture
def clock() -> ManualClock:
    """A controlled clock at NOW, the instant the tests' tokens are issued."""
    return ManualClock(wall=NOW)
