"""Shared fixtures for the Python-level tests.

Nothing here is backend-specific: the tests run against whatever
``retroprop.backend.get_backend()`` returns (the C backend by default,
the NumPy reference with RETROPROP_BACKEND=numpy).
"""
import numpy as np
import pytest

from retroprop.backend import get_backend


@pytest.fixture
def backend():
    """The backend module the library uses in this test run."""
    return get_backend()


@pytest.fixture
def rng():
    """A fresh, seeded random generator per test."""
    return np.random.default_rng(1234)
