"""Shared fixtures: where the real SIIM files are, and small synthetic inputs."""

from pathlib import Path

import pytest

SIIM_REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "siim-real"


@pytest.fixture(scope="session")
def siim_real() -> Path:
    """The folder of real SIIM-ACR files; tests that need it skip when it is absent."""
    if not SIIM_REAL.is_dir():
        pytest.skip(f"real SIIM files not found at {SIIM_REAL}")
    return SIIM_REAL
