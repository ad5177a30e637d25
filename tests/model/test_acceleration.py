"""The device policy: what is on by default where, and the compiled path's arithmetic."""

import threading
import time

import pytest
import torch

from ptxseg.model import acceleration as acc


def test_gpu_defaults_and_cpu_defaults():
    assert acc.resolve_compile(None, "cuda:1") is True
    assert acc.resolve_compile(None, "cpu") is False
    assert acc.resolve_compile(False, "cuda") is False and acc.resolve_compile(True, "cpu")
    assert acc.resolve_channels_last(None, "cuda") is True
    assert acc.resolve_channels_last(None, "cpu") is False
    assert acc.resolve_training_precision("auto", "cpu") == "32"
    assert acc.resolve_training_precision("16-mixed", "cpu") == "16-mixed"
    expected = "bf16-mixed" if acc.cuda_bf16() else "32"
    assert acc.resolve_training_precision("auto", "cuda") == expected


def test_fast_float32_changes_nothing_on_the_cpu():
    before = torch.get_float32_matmul_precision()
    acc.use_fast_float32("cpu")
    assert torch.get_float32_matmul_precision() == before


def test_compiled_function_gives_the_eager_result(monkeypatch):
    monkeypatch.setenv(acc.COMPILE_BACKEND_ENV, "aot_eager")  # the compiler path, no C++ build
    assert acc.compile_backend() == "aot_eager"
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU())
    compiled = acc.compile_function(model)
    x = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(compiled(x), model(x))


def test_unknown_compile_mode_lists_the_valid_ones():
    with pytest.raises(ValueError, match="reduce-overhead"):
        acc.compile_function(lambda x: x, "fastest")


def test_device_warm_up_does_nothing_off_cuda():
    warm = acc.DeviceWarmUp("cpu", time.perf_counter())
    assert warm._thread is None and warm.wait() is None


def test_device_warm_up_runs_beside_the_caller(monkeypatch):
    """The context is made in a thread: the caller goes on (here it releases the fake driver,
    which would otherwise wait in vain) and `wait` gives when the context was ready."""
    caller_went_on = threading.Event()
    made = []
    zeros = torch.zeros

    def fake_zeros(*args, device=None, **kwargs):
        made.append((device, caller_went_on.wait(10)))
        return zeros(1)

    monkeypatch.setattr(acc.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(acc.torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(acc.torch, "zeros", fake_zeros)
    started = time.perf_counter()
    warm = acc.DeviceWarmUp("cuda:0", started)
    caller_went_on.set()
    ready = warm.wait()
    assert made == [(torch.device("cuda:0"), True)]
    assert ready is not None and 0 <= ready <= time.perf_counter() - started + 0.001


def test_device_warm_up_leaves_failures_to_the_model_load(monkeypatch):
    monkeypatch.setattr(acc.torch.cuda, "is_available", lambda: True)

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: no CUDA-capable device is detected")

    monkeypatch.setattr(acc.torch, "zeros", broken)
    warm = acc.DeviceWarmUp("cuda", time.perf_counter())
    assert warm.wait() is None and "no CUDA-capable device" in str(warm.error)


@pytest.mark.gpu
def test_device_warm_up_makes_the_context():
    warm = acc.DeviceWarmUp("cuda", time.perf_counter())
    assert warm.wait() > 0 and torch.cuda.is_initialized()
