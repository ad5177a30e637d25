"""`ptxseg benchmark-gpu`: the GPU measurements of ptxseg in one run, one table per stage.

Built for one prepared run on a lent GPU (`benchmarks/gpu.sh`, under 7 minutes on one H100 or
H200): every stage compares configurations side by side on the same card, so the ratios hold,
and writes `gpu-<stage>.md` (and `.csv`) with the machine in its header. One module per stage,
each registered by name (`bench.gpu_stage`) and called with a `StageContext`:

- `prepare_stage`: the cache written by a CPU process pool and by nvJPEG with the GPU resize.
- `train_stage`: `ptxseg train` end to end before and now, and the model alone.
- `predict_stage`: `ptxseg predict` on DICOMs, decoders, eager and compiled, outputs.
- `backbones_stage`: the encoder eager, channels_last, compiled, with CUDA graphs.
- `serve_stage`: seconds from `ptxseg serve` to its first answer.
- `writes_stage`: predict's writer processes alone, per kind of mask.
- `pipeline_stage`: predict around a stand-in model (everything but the network).

`bench` holds the settings, the run and the registry, `bench_data` the DICOMs, `runner` the order.
The same stages run on the CPU at toy sizes (`--device cpu`), which is how the tests check them.
"""

from ptxseg.benchmarks.gpu.bench import (
    GPU_STAGES,
    STAGES,
    Bench,
    BenchData,
    GpuBenchSettings,
    StageContext,
    gpu_stage,
)
from ptxseg.benchmarks.gpu.bench_data import make_data
from ptxseg.benchmarks.gpu.predict_stage import loop_text, mask_dice, peak_difference, startup_text
from ptxseg.benchmarks.gpu.runner import run_gpu_benchmark
from ptxseg.benchmarks.gpu.writes_stage import sample_masks

__all__ = [
    "GPU_STAGES",
    "STAGES",
    "Bench",
    "BenchData",
    "GpuBenchSettings",
    "StageContext",
    "gpu_stage",
    "loop_text",
    "make_data",
    "mask_dice",
    "peak_difference",
    "run_gpu_benchmark",
    "sample_masks",
    "startup_text",
]
