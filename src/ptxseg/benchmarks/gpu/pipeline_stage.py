"""Stage `pipeline`: `predict_files` around a stand-in model (`benchmarks/predict_pipeline.py`):
what readers, main loop and writers sustain without the network."""

from __future__ import annotations

from ptxseg.benchmarks.common import error_text
from ptxseg.benchmarks.gpu.bench import StageContext, gpu_stage

NOTES = (
    "A stand-in model (constant logits: every mask empty, or one box of about 4% of the "
    "image each) in the real `predict_files`, outputs mask and findings: everything but "
    "the network. files_per_task: files a reader or writer process gets per message "
    "(`predict` uses 8 when the GPU decodes, 1 on the CPU path); main_cpu_ms_per_image: "
    "CPU time of the main process, its threads included, per image; main_loop: seconds "
    "the main loop waited for readers, launching batches, the device, handing out and "
    "writers. decode 'stubbed': the GPU path's "
    "readers and main loop with the device's work (decode, resize, model, masks) replaced by "
    "ready-made zeros, which shows the main loop's own cost on a machine without a GPU."
)


@gpu_stage("pipeline")
def stage_pipeline(ctx: StageContext) -> None:
    """`predict_files` with a stand-in model: what readers, main loop and writers sustain."""
    from ptxseg.benchmarks.predict_pipeline import PipelineRun, measure_pipeline
    from ptxseg.inference.main_loop import FILES_PER_TASK

    bench, s = ctx.bench, ctx.bench.s
    inputs = sorted(ctx.data.predict_inputs.glob("*.dcm"))
    rows = []
    # (files per task, one lesion per mask, device work stubbed): without a GPU the device path
    # is also run with its tensor work stubbed out, to show the main loop's own cost there
    runs = [(1, False, False), (FILES_PER_TASK, False, False), (FILES_PER_TASK, True, False)]
    if not bench.gpu:
        runs += [(1, False, True), (FILES_PER_TASK, False, True)]
    for per_task, lesion, stub in runs:
        run = PipelineRun(s.size, s.device, s.batch_size, s.workers, per_task, lesion, stub)
        try:
            rows.append(measure_pipeline(inputs, s.work / "pipeline", run))
        except Exception as err:  # noqa: BLE001 - the row says what failed
            rows.append({"files_per_task": per_task, "error": error_text(err)})
    bench.write(
        "pipeline",
        f"predict without the model: {len(inputs)} DICOMs to masks and findings at "
        f"{s.size} px, batch {s.batch_size}",
        rows,
        NOTES,
    )
