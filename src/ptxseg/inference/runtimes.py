"""Inference back ends behind one call: a float32 (B, 1, S, S) batch in [0, 1] -> logits.

- `torch`: PyTorch on the CPU or a GPU, channels_last, fp32 or bf16 (autocast; oneDNN uses
  AVX512-BF16/AMX on the CPU), optionally compiled; see `ptxseg.inference.torch_runner`.
- `onnxruntime`: fp32 with all graph optimisations, or int8 (static QDQ or dynamic quantisation).
- `openvino`: fp32 or bf16 (inference precision hint), or int8 by running the QDQ model.
Every runner returns float32 numpy logits, so the Predictor does not care which one ran.

Reduced precision on a CPU is only worth it with the instructions for it: `cpu_precision_plan`
reads the CPU's instruction sets once and refuses bf16 where it would be emulated (slower than
fp32) and quantises int8 to 7 bits where VNNI is missing (full 8 bits saturate there and the
masks drift far from fp32).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ptxseg.util.system import CpuInfo, cpu_info, usable_cores

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


class PrecisionUnavailable(ValueError):
    """This CPU cannot run the asked precision well; the message names what is missing."""


def cpu_precision_plan(precision: str, device: str = "cpu", cpu: CpuInfo | None = None) -> dict:
    """How `precision` runs on this CPU: {"reduce_range": bool, "note": str}; raises
    PrecisionUnavailable where it would be slower than fp32 (bf16 without bf16 instructions).

    GPUs and fp32 need no plan. int8 without VNNI (or AMX-INT8) is quantised with
    `reduce_range` (7 bits), which keeps the masks close to fp32 on those CPUs.
    """
    plan = {"reduce_range": False, "note": ""}
    if precision == "fp32" or not str(device).startswith("cpu"):
        return plan
    cpu = cpu or cpu_info()
    if precision == "bf16" and not cpu.native_bf16:
        raise PrecisionUnavailable(
            f"precision bf16 needs bf16 instructions (AVX-512 BF16 or AMX-BF16), which this CPU "
            f"({cpu.model}; {cpu.isa()}) lacks: bf16 would be emulated, slower than fp32 and "
            "less exact. Use --precision fp32, or int8 with --runtime onnxruntime or openvino"
        )
    if precision == "int8" and not cpu.vnni:
        plan.update(
            reduce_range=True,
            note=f"int8 quantised to 7 bits (reduce_range): this CPU ({cpu.isa()}) has no VNNI",
        )
    return plan


def check_int8_file(metadata: dict, cpu: CpuInfo | None = None) -> None:
    """Refuse an int8 ONNX file quantised to full 8 bits on a CPU without VNNI (it saturates)."""
    cpu = cpu or cpu_info()
    if metadata.get("precision") == "int8" and not metadata.get("reduce_range") and not cpu.vnni:
        raise PrecisionUnavailable(
            "this int8 ONNX file was quantised to full 8 bits for CPUs with VNNI; this CPU "
            f"({cpu.model}; {cpu.isa()}) has none and its masks would drift far from fp32. "
            "Run the fp32 file with --precision int8 (it is then quantised for this CPU), or "
            "re-export with `ptxseg export --int8` on this machine"
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
