"""Shared fixtures. The fake upstream PyPI is in tests/fakepypi.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakepypi import FakePyPI


@pytest.fixture
def fake_pypi() -> Iterator[FakePyPI]:
    """A running fake upstream PyPI on 127.0.0.1, empty; stopped after the test."""
    with FakePyPI() as fake:
        yield fake
