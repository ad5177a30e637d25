"""`ptxseg benchmark-gpu` (moved into a package; split by stage next)."""

from ptxseg.benchmarks.gpu.predict_stage import (  # noqa: F401
    STAGES,
    Bench,
    GpuBenchSettings,
    loop_text,
    make_data,
    mask_dice,
    peak_difference,
    run,
    sample_masks,
    startup_text,
)
