"""How a model runs fast on the device at hand: compilation, precision and memory format.

One policy for training and inference alike. On CUDA ptxseg compiles the model with
`torch.compile`, runs it in bf16 (mixed precision) with channels_last tensors and lets float32
matrix products use TF32 (`torch.set_float32_matmul_precision("high")`); on the CPU it keeps eager
fp32, where compilation costs minutes and buys little. Every choice can be forced either way:
`None` (or "auto") means "the default for this device".

`PTXSEG_COMPILE_BACKEND` names another `torch.compile` backend (`aot_eager`, `eager`), to rule out
a compiler problem or to exercise the compiled path quickly on a CPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

COMPILE_BACKEND_ENV = "PTXSEG_COMPILE_BACKEND"
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def device_type(device: str | torch.device) -> str:
    """'cuda', 'cpu', ... of a device name such as 'cuda:1'."""
    return torch.device(device).type


def cuda_bf16() -> bool:
    """True when a CUDA device is present and does bf16 arithmetic natively (Ampere or newer)."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_compile(requested: bool | None, device: str | torch.device) -> bool:
    """Whether to compile: as requested, else on for CUDA devices and off elsewhere."""
    if requested is not None:
        return bool(requested)
    return device_type(device) == "cuda"


def resolve_channels_last(requested: bool | None, device: str | torch.device) -> bool:
    """channels_last as requested, else on for CUDA (tensor-core convolutions want NHWC)."""
    if requested is not None:
        return bool(requested)
    return device_type(device) == "cuda"


def resolve_training_precision(requested: str, device: str | torch.device) -> str:
    """Lightning's precision: 'auto' is bf16-mixed on a bf16-capable GPU, else full 32-bit."""
    if requested != "auto":
        return requested
    return "bf16-mixed" if device_type(device) == "cuda" and cuda_bf16() else "32"


def use_fast_float32(device: str | torch.device) -> None:
    """Let float32 matrix products and convolutions use TF32 on CUDA (no effect on the CPU).

    The model runs in bf16 anyway on such devices; what stays in float32 (losses, the decoder's
    upsampling under autocast) loses nothing that matters at TF32's 10-bit mantissa.
    """
    if device_type(device) == "cuda":
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True


def compile_backend() -> str:
    """The torch.compile backend: inductor unless `PTXSEG_COMPILE_BACKEND` names another."""
    return os.environ.get(COMPILE_BACKEND_ENV, "").strip() or "inductor"


def compile_function(fn: Callable[..., Any], mode: str = "default") -> Callable[..., Any]:
    """`torch.compile(fn)` with static shapes (callers keep batch shapes fixed) and our backend.

    `mode` is one of `COMPILE_MODES`; 'reduce-overhead' adds CUDA graphs, which pay off when a
    step launches many small kernels (small batches) and cost memory for the captured graphs.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode {mode!r}: expected one of {', '.join(COMPILE_MODES)}")
    backend = compile_backend()
    options: dict[str, Any] = {"backend": backend, "dynamic": False}
    if backend == "inductor" and mode != "default":
        options["mode"] = mode
    return torch.compile(fn, **options)


class DeviceWarmUp:
    """Create the CUDA context in a thread while this one goes on importing and loading.

    Creating the context of a large GPU takes seconds in the driver, and torch releases the
    interpreter lock while it allocates, so the imports of segmentation_models_pytorch, timm and
    torchvision (held by that lock) run meanwhile instead of after it. `wait()` joins the thread
    and gives the seconds after `started` (a `time.perf_counter()` value) when the context was
    ready; None when `device` is not a CUDA device or the context could not be made (the model's
    own load then says why).
    """

    def __init__(self, device: str | torch.device, started: float) -> None:
        import threading

        self.started = started
        self.ready_s: float | None = None
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if device_type(device) == "cuda":
            self._thread = threading.Thread(
                target=self._warm, args=(torch.device(device),), name="cuda-context", daemon=True
            )
            self._thread.start()

    def _warm(self, device: torch.device) -> None:
        import time

        try:
            if not torch.cuda.is_available():
                return
            torch.zeros(1, device=device)
            torch.cuda.synchronize(device)
            self.ready_s = round(time.perf_counter() - self.started, 3)
        except Exception as err:  # noqa: BLE001 - reported by the caller's own use of the device
            self.error = err

    def wait(self) -> float | None:
        if self._thread is not None:
            self._thread.join()
        return self.ready_s
