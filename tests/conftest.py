"""Shared fixtures: where the real SIIM files are, and small synthetic inputs."""

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Fuzz tests draw `max_examples` cases; `HYPOTHESIS_PROFILE=fuzz pytest ...` draws many more.
settings.register_profile("default", max_examples=150, deadline=5000)
settings.register_profile(
    "fuzz", max_examples=20000, deadline=5000, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# The shared folder beside the checkout; PTXSEG_SIIM_REAL names another (benchmarks/gpu.sh on a
# machine where the checkout travels without it).
SIIM_REAL = Path(
    os.environ.get("PTXSEG_SIIM_REAL")
    or Path(__file__).resolve().parents[2] / "shared" / "data" / "siim-real"
)


# `--runtime auto` / `--precision auto` (the commands' default on a CPU) measure every path once
# per model; the suite pins the path its tests were written for, in this process and in the
# commands it starts, and keeps any cache out of the user's home. Tests of the choice clear these
# and fake the measurements (tests/inference/test_choice.py).
os.environ["PTXSEG_RUNTIME"] = "torch"
os.environ["PTXSEG_PRECISION"] = "fp32"


@pytest.fixture(autouse=True, scope="session")
def cache_outside_home(tmp_path_factory):
    """ptxseg's cache folder (runtime choices) in a temporary folder for the whole session."""
    before = os.environ.get("PTXSEG_CACHE_DIR")
    os.environ["PTXSEG_CACHE_DIR"] = str(tmp_path_factory.mktemp("ptxseg-cache"))
    yield
    if before is None:
        os.environ.pop("PTXSEG_CACHE_DIR", None)
    else:
        os.environ["PTXSEG_CACHE_DIR"] = before


@pytest.fixture(scope="session")
def siim_real() -> Path:
    """The folder of real SIIM-ACR files; tests that need it skip when it is absent."""
    if not SIIM_REAL.is_dir():
        pytest.skip(f"real SIIM files not found at {SIIM_REAL}")
    return SIIM_REAL


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine threads contend."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` skip, saying why, where torch sees no CUDA device (`-m gpu` on a CPU)."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_tests:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device: torch.cuda.is_available() is False")
    for item in gpu_tests:
        item.add_marker(skip)
