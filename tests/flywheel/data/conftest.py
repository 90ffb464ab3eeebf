"""Fixtures for the data tests."""

from __future__ import annotations

import pytest
from flywheel_data_helpers import small_spec

from rig.spec import RigSpec


@pytest.fixture
def spec() -> RigSpec:
    return small_spec()
