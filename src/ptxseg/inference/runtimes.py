"""Inference back ends behind one call: a float32 (B, 1, S, S) batch in [0, 1] -> logits.

- `torch`: PyTorch on the CPU or a GPU, channels_last, fp32 or bf16 (autocast; oneDNN uses
  AVX512-BF16/AMX on the CPU), optionally compiled; see `ptxseg.inference.torch_runner`.
- `onnxruntime`: fp32 with all graph optimisations, or int8 (static QDQ or dynamic quantisation).
- `openvino`: fp32 or bf16 (inference precision hint), or int8 by running the QDQ model.
Every runner returns float32 numpy logits, so the Predictor does not care which one ran.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ptxseg.system import usable_cores

RUNTIMES = ("torch", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")
SUPPORTED = {
    "torch": ("fp32", "bf16"),
    "onnxruntime": ("fp32", "int8"),
    "openvino": ("fp32", "bf16", "int8"),
}

Runner = Callable[[np.ndarray], np.ndarray]


def check_runtime(runtime: str, precision: str) -> None:
    """Raise ValueError naming the valid choices for an unknown or unsupported combination."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    if precision not in SUPPORTED[runtime]:
        hint = {
            ("torch", "int8"): "use --runtime onnxruntime or openvino for int8",
            ("onnxruntime", "bf16"): "ONNX Runtime has no bf16 CPU kernels for these "
            "convolutions; use --runtime torch or openvino for bf16",
        }.get((runtime, precision), "")
        raise ValueError(
            f"precision {precision!r} is not available with runtime {runtime!r}: expected one of "
            f"{', '.join(SUPPORTED[runtime])}" + (f" ({hint})" if hint else "")
        )


def torch_runner(
    model,
    device: str = "cpu",
    precision: str = "fp32",
    channels_last: bool = True,
    compile: bool = False,
    compile_mode: str = "default",
    batch_size: int = 4,
):
    """PyTorch (see `ptxseg.inference.torch_runner`); bf16 through autocast, so sensitive ops
    (sigmoid, norms) stay fp32. Besides the Runner call it offers device-side probabilities."""
    from ptxseg.inference.torch_runner import TorchRunner

    check_runtime("torch", precision)
    return TorchRunner(model, device, precision, channels_last, compile, compile_mode, batch_size)


def onnxruntime_runner(onnx_path: str | Path, threads: int | None = None) -> Runner:
    """ONNX Runtime CPU session with every graph optimisation and one thread per core."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or usable_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(
        str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name

    def run(batch: np.ndarray) -> np.ndarray:
        (logits,) = session.run(None, {name: np.ascontiguousarray(batch, dtype=np.float32)})
        return logits.astype(np.float32, copy=False)

    return run


def openvino_runner(
    onnx_path: str | Path, precision: str = "fp32", threads: int | None = None
) -> Runner:
    """OpenVINO on the CPU; bf16 via the inference precision hint, int8 from a QDQ model."""
    try:
        import openvino as ov
    except ImportError:
        raise ImportError(
            "runtime 'openvino' needs the openvino package: pip install 'ptxseg[openvino]' "
            "(or pip install openvino), or use --runtime onnxruntime"
        ) from None
    check_runtime("openvino", precision)
    core = ov.Core()
    config = {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": threads or usable_cores(),
        # int8 models carry their own precision; fp32 must not be silently lowered to bf16.
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
    }
    compiled = core.compile_model(str(onnx_path), "CPU", config)
    request = compiled.create_infer_request()

    def run(batch: np.ndarray) -> np.ndarray:
        result = request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.asarray(result[compiled.output(0)], dtype=np.float32)

    return run
