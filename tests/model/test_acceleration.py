"""The device policy: what is on by default where, and the compiled path's arithmetic."""

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
