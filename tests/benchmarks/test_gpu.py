"""benchmark-gpu: its data, its tables, and its stages run end to end at toy sizes on the CPU."""

import csv
import json

import numpy as np
import pytest

from ptxseg.benchmarks import gpu
from ptxseg.cli import main


def toy(tmp_path, **changes) -> gpu.GpuBenchSettings:
    values = dict(
        out=tmp_path / "results",
        work=tmp_path / "work",
        images=10,
        distinct=4,
        source_size=128,
        size=64,
        encoder="resnet18",
        batch_size=4,
        train_batches=2,
        workers=2,
        device="cpu",
    )
    values.update(changes)
    return gpu.GpuBenchSettings(**values)


def test_unknown_stages_are_refused(tmp_path):
    with pytest.raises(ValueError, match="warp: choose from pipeline, serve, predict"):
        toy(tmp_path, stages=("predict", "warp"))


def test_data_repeats_a_few_radiographs_with_their_annotations(tmp_path):
    bench = gpu.Bench(toy(tmp_path), say=lambda _: None)
    data = gpu.make_data(bench)
    files = sorted(data.dicoms.glob("*.dcm"))
    assert len(files) == 10 and len({f.stat().st_ino for f in files}) <= 10
    with open(data.annotations, newline="") as handle:
        ids = {row["ImageId"] for row in csv.DictReader(handle)}
    assert ids == {f.stem for f in files}
    assert data.predict_inputs == data.dicoms and "synthetic" in data.predict_source


def test_tables_name_the_machine(tmp_path):
    bench = gpu.Bench(toy(tmp_path), say=lambda _: None)
    path = bench.write("demo", "A title", [{"path": "a", "images_per_s": 1.5}], "A note.")
    text = path.read_text()
    assert text.startswith("# A title") and "torch " in text and "GPU: " in text
    assert "| a | 1.5 |" in text and (tmp_path / "results" / "gpu-demo.csv").is_file()


def test_mask_dice_compares_two_prediction_folders(tmp_path):
    from ptxseg.inference.outputs import write_mask

    a, b = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    a[:4], b[:2] = True, True
    write_mask(tmp_path / "x" / "masks" / "1.png", a)
    write_mask(tmp_path / "y" / "masks" / "1.png", b)
    assert gpu.mask_dice(tmp_path / "x", tmp_path / "y") == pytest.approx(2 * 16 / 48, abs=1e-5)


@pytest.mark.slow
def test_prepare_and_predict_stages_at_toy_size(tmp_path):
    settings = toy(tmp_path, stages=("prepare", "predict"))
    tables = gpu.run_gpu_benchmark(settings, say=lambda _: None)
    assert [t.name for t in tables] == ["gpu-prepare.md", "gpu-predict.md"]
    predict = (tmp_path / "results" / "gpu-predict.md").read_text()
    assert "reference: eager fp32, CPU decode" in predict and "exit " not in predict
    record = json.loads((tmp_path / "work" / "predict-0" / "run.json").read_text())
    assert record["predicted"] == 10 and record["errors"] == 0
    with open(tmp_path / "results" / "gpu-predict.csv", newline="") as handle:
        rows = {r["path"]: r for r in csv.DictReader(handle)}
    empty = rows["eager fp32, CPU decode, every mask empty"]
    assert empty["images"] == "10" and empty["positive_masks"] == "0"
    assert empty["main_loop"].startswith("reads ") and "writers " in empty["main_loop"]


@pytest.mark.slow
def test_cli_runs_the_train_and_backbone_stages_at_toy_size(tmp_path):
    args = ["benchmark-gpu", "--device", "cpu", "--out", str(tmp_path / "r")]
    args += ["--work", str(tmp_path / "w"), "--images", "12", "--distinct", "4"]
    args += ["--source-size", "128", "--size", "64", "--encoder", "resnet18"]
    args += ["--batch-size", "4", "--train-batches", "2", "--workers", "2"]
    with pytest.raises(SystemExit) as done:
        main([*args, "--stages", "train,backbones"])
    assert done.value.code in (0, None)
    train = (tmp_path / "r" / "gpu-train.md").read_text()
    assert "now: compiled" in train and "loader_overhead_pct" in train
    assert "first_batch_wait_s" in train and "overhead_after_first_batch_pct" in train
    assert "compiled channels_last" in (tmp_path / "r" / "gpu-backbones.md").read_text()


def test_peak_difference_compares_the_findings_of_two_runs(tmp_path):
    for folder, value in (("x", 0.25), ("y", 0.5)):
        (tmp_path / folder / "findings").mkdir(parents=True)
        (tmp_path / folder / "findings" / "1.json").write_text(json.dumps({"probability": value}))
    assert gpu.peak_difference(tmp_path / "x", tmp_path / "y") == 0.25


def test_sample_masks_are_empty_one_region_and_noise():
    masks = gpu.sample_masks((200, 160))
    empty, lesion, noise = masks.values()
    assert not empty.any()
    assert 0.02 < lesion.mean() < 0.2  # one region, a lesion's share of the image
    assert 0.4 < noise.mean() < 0.6


def stage_rows(tmp_path, stage: str) -> list[dict]:
    """Run one stage at toy size; the rows of the table it wrote."""
    tables = gpu.run_gpu_benchmark(toy(tmp_path, stages=(stage,)), say=lambda _: None)
    assert [t.name for t in tables] == [f"gpu-{stage}.md"]
    with open(tmp_path / "results" / f"gpu-{stage}.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_writes_stage_times_the_writer_pool_per_kind_of_mask(tmp_path):
    rows = stage_rows(tmp_path, "writes")
    assert [r["mask"] for r in rows] == ["empty", "lesion (one region)", "noise (untrained model)"]
    assert all(r["errors"] == "0" and float(r["images_per_s"]) > 0 for r in rows)
    # what the writers wrote is what predict writes: the mask and its findings
    lesion = tmp_path / "work" / "writes" / "lesion"
    assert (lesion / "masks" / "m0.png").is_file() and (lesion / "findings" / "m0.json").is_file()
    assert json.loads((lesion / "findings" / "m0.json").read_text())["pneumothorax"] is True


def test_startup_text_says_where_a_predict_run_started_up():
    record = {
        "model_ready_after_command_s": 8.6,
        "startup_after_command_s": {
            "workers_launched_s": 0.31,
            "torch_imported_s": 1.27,
            "predictor_imported_s": 1.28,
            "cuda_ready_s": 3.04,
        },
    }
    assert gpu.startup_text(record) == "workers 0.3, torch 1.3, cuda 3.0, model 8.6"
    assert gpu.startup_text({"model_ready_after_command_s": 2.7}) == "model 2.7"


def test_loop_text_lists_the_main_loops_waits():
    record = {"main_loop_s": {"reads": 0.21, "launch": 3.14, "device": 0.0, "writers": 9.81}}
    assert gpu.loop_text(record) == "reads 0.2, launch 3.1, device 0.0, writers 9.8"
    assert gpu.loop_text({}) == ""


def test_pipeline_stage_runs_predict_around_a_stand_in_model(tmp_path):
    rows = stage_rows(tmp_path, "pipeline")
    assert [(r["files_per_task"], r["masks"], r["decode"]) for r in rows] == [
        ("1", "every one empty", "CPU"),
        ("8", "every one empty", "CPU"),
        ("8", "one lesion each", "CPU"),
        ("1", "every one empty", "stubbed"),
        ("8", "every one empty", "stubbed"),
    ]
    assert all(r["images"] == "10" and r["errors"] == "0" for r in rows)
    assert [r["positive_masks"] for r in rows] == ["0", "0", "10", "0", "0"]
    assert all(float(r["main_cpu_ms_per_image"]) > 0 and "writers" in r["main_loop"] for r in rows)


def test_every_stage_is_registered_once_under_its_name():
    assert set(gpu.GPU_STAGES) == set(gpu.STAGES)
    assert all(f.__name__ == f"stage_{name}" for name, f in gpu.GPU_STAGES.items())
    with pytest.raises(ValueError, match="warp"):
        gpu.gpu_stage("warp")
