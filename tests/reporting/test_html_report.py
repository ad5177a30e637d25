"""HTML report from a hand-made run folder in the documented formats: tables, embedded images,
nothing external, and a clear note for what is missing."""

import csv
import json
import re
import subprocess

import chromium
import numpy as np
import pytest

from ptxseg.benchmarks.backbones import COLUMNS, write_benchmark
from ptxseg.cli import main
from ptxseg.config import TrainConfig, save_config
from ptxseg.reporting.html_report import render_report, write_html_report
from ptxseg.reporting.report_folders import discover, read_curves, read_panels


def write_lightning_log(path, epochs=3):
    """A log as Lightning's CSVLogger writes it: train and val rows with empty cells."""
    columns = ["epoch", "step", "train/loss", "train/dice", "val/loss", "val/dice", "val/iou"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for e in range(epochs):
            writer.writerow({"epoch": e, "step": 9, "train/loss": 1 - 0.2 * e, "train/dice": 0.2})
            writer.writerow({"epoch": e, "step": 9, "val/loss": 1.1, "val/dice": 0.15 + 0.2 * e})


def write_metrics_csv(path, epochs=3):
    """metrics.csv as `ptxseg train` writes it: one tidy row per epoch."""
    columns = ["epoch", "train_loss", "train_dice", "train_iou", "val_loss", "val_dice"]
    columns += ["val_iou", "val_pixel_accuracy", "val_competition_dice", "lr"]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for e in range(epochs):
            writer.writerow(
                [
                    e,
                    1 - 0.2 * e,
                    0.2 + 0.2 * e,
                    0.1 + 0.2 * e,
                    1.1 - 0.2 * e,
                    0.15 + 0.2 * e,
                    0.08 + 0.2 * e,
                    0.99,
                    0.7 + 0.05 * e,
                    1e-3,
                ]
            )


def write_summary(path):
    """summary.json as `ptxseg evaluate` writes it: metrics labelled with their kind."""
    from ptxseg.model.metrics import METRIC_KINDS

    values = {
        "dice_pooled": 0.61,
        "iou_pooled": 0.44,
        "pixel_accuracy_pooled": 0.99,
        "dice_per_image": 0.83,
        "dice_positive_per_image": 0.52,
        "roc_auc": 0.9,
    }
    path.write_text(
        json.dumps(
            {
                "split": "test",
                "encoder": "resnet18",
                "input_size": 64,
                "tta": "none",
                "operating_point_description": "threshold 0.5",
                "operating_point_source": "checkpoint",
                "counts": {"n_images": 6, "n_positive": 2},
                "competition_dice": 0.83,
                "metrics": {
                    name: {
                        "value": values.get(name, float("nan")),
                        "kind": kind,
                        "description": text,
                    }
                    for name, (kind, text) in METRIC_KINDS.items()
                },
            },
            allow_nan=True,
        )
    )


def make_run(folder, work, with_eval=True):
    config = TrainConfig()
    config.data.work = str(work)
    config.model.encoder = "resnet18"
    save_config(config, folder / "config.yaml")
    (folder / "checkpoints").mkdir()
    write_metrics_csv(folder / "metrics.csv")
    (folder / "train_summary.json").write_text(json.dumps({"best_epoch": 2, "best_val_dice": 0.55}))
    if not with_eval:
        return
    ev = folder / "eval" / "test"
    ev.mkdir(parents=True)
    write_summary(ev / "summary.json")
    (ev / "roc.csv").write_text("fpr,tpr,threshold\n0,0,inf\n0,0.5,0.8\n0.25,1,0.5\n1,1,0\n")
    rng = np.random.default_rng(0)
    truths = np.zeros((4, 32, 32), np.uint8)
    truths[:, 8:20, 8:16] = 1
    masks = np.roll(truths, 2, axis=2)
    masks[2] = 0
    np.savez_compressed(
        ev / "panels.npz",
        image_ids=np.array(["a", "b", "c", "d"]),
        kinds=np.array(["best", "worst", "false_negative", "best"]),
        images=rng.integers(0, 255, (4, 32, 32), dtype=np.uint8),
        truths=truths,
        probabilities=masks.astype(np.float16),
        masks=masks,
        dice=np.array([0.9, 0.1, 0.0, 0.8], np.float32),
        operating_point=np.array(json.dumps({"top": 0.5, "bottom": 0.5, "min_area": 0})),
    )


@pytest.fixture
def demo(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "splits.json").write_text(
        json.dumps({"seed": 1, "train": ["a", "b", "c"], "val": ["d"], "test": ["e", "f"]})
    )
    (tmp_path / "runs" / "resnet18").mkdir(parents=True)
    (tmp_path / "runs" / "xception").mkdir(parents=True)
    make_run(tmp_path / "runs" / "resnet18", work)
    make_run(tmp_path / "runs" / "xception", work, with_eval=False)
    row = {k: "" for k in COLUMNS}
    row.update(
        encoder="resnet18",
        size=64,
        batch_size=1,
        device="cpu",
        precision="fp32",
        params_m=14.3,
        gflops_per_image=0.66,
        latency_p50_ms=9.5,
        infer_mem_mb=80.0,
    )
    write_benchmark([row], tmp_path / "benchmark")
    return tmp_path


def test_curves_from_the_per_epoch_table(tmp_path):
    write_metrics_csv(tmp_path / "metrics.csv")
    epochs, curves = read_curves(tmp_path / "metrics.csv")
    assert epochs == [0, 1, 2]
    assert curves["dice"]["val"] == pytest.approx([0.15, 0.35, 0.55])
    assert curves["loss"]["train"] == pytest.approx([1.0, 0.8, 0.6])
    assert curves["competition_dice"] == {"val": pytest.approx([0.7, 0.75, 0.8])}


def test_curves_take_one_value_per_epoch_from_lightning_rows(tmp_path):
    write_lightning_log(tmp_path / "log.csv")
    epochs, curves = read_curves(tmp_path / "log.csv")
    assert epochs == [0, 1, 2]
    assert curves["dice"]["val"] == pytest.approx([0.15, 0.35, 0.55])
    assert curves["loss"]["train"] == pytest.approx([1.0, 0.8, 0.6])
    assert "iou" not in curves or "train" not in curves["iou"]


def test_panels_are_grouped_in_figure_order(demo):
    groups = read_panels(demo / "runs/resnet18/eval/test/panels.npz")
    assert [g["category"] for g in groups] == ["best", "worst", "false_negative"]
    assert len(groups[0]["images"]) == 2 and groups[0]["titles"][0].startswith("a")


def test_report_of_a_demo_folder_has_tables_images_and_no_external_urls(demo):
    found = discover(demo)
    assert sorted(r.name for r in found["runs"]) == ["runs/resnet18", "runs/xception"]
    path = write_html_report(demo)
    text = path.read_text()
    assert path == demo / "report.html"
    assert re.search(r"https?://|src=\"(?!data:)|<link|@import|url\(", text) is None
    images = re.findall(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]{200,}"', text)
    # curves x2, ROC, panels (3 groups), benchmark chart
    assert len(images) == 7
    assert text.count("<table") >= 5
    assert "Backbone benchmark" in text and "14.3" in text
    assert 'class="kind pooled"' in text and 'class="kind per-image"' in text
    assert "train <b>3</b>" in text and "test <b>2</b>" in text  # split counts from splits.json
    assert "no evaluation found" in text  # the xception run has none
    assert text.count("0.8300") >= 2  # competition Dice in the overview and the metrics table
    assert "ROC AUC of the per-image score" in text  # the meaning from summary.json


def test_report_of_a_single_run_and_a_broken_file(demo):
    run = demo / "runs" / "resnet18"
    (run / "eval" / "test" / "panels.npz").write_bytes(b"not a zip")
    text = render_report(run)
    assert "cannot read" in text and "panels.npz" in text
    assert "Metrics on the test split" in text
    assert "Backbone benchmark" not in text


def test_report_of_an_empty_folder_says_what_is_expected(tmp_path):
    text = render_report(tmp_path)
    assert "nothing to report" in text and "config.yaml" in text


def test_cli_writes_report_into_out(demo, tmp_path):
    out = tmp_path / "site"
    try:
        main(["report", str(demo), "--out", str(out)])
    except SystemExit as exc:
        assert exc.code == 0
    assert (out / "report.html").stat().st_size > 10_000


@pytest.mark.browser
def test_report_renders_in_chromium(demo, tmp_path):
    browser = chromium.find()
    if browser is None:
        pytest.skip("chromium not installed (apt-get install chromium)")
    path = write_html_report(demo)
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            browser,
            "--headless",
            *chromium.ARGS,
            f"--screenshot={shot}",
            "--window-size=1280,2000",
            path.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_cli_report_on_a_folder_without_runs_is_an_error(tmp_path, capsys):
    from ptxseg.cli import main

    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(SystemExit) as done:
        main(["report", str(tmp_path / "empty")])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "nothing to report in" in err and "config.yaml" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "empty" / "report.html").exists()


def test_cv_folder_shows_its_folds_side_by_side(tmp_path):
    """A `ptxseg cv` folder: one row per fold (training and out-of-fold numbers) and pooled."""
    cv = tmp_path / "cv"
    cv.mkdir()
    (cv / "cv.json").write_text(json.dumps({"data": "w", "folds": 3, "config": "demo"}))

    def metrics(dice):
        return {"dice_per_image": {"value": dice, "kind": "per-image", "description": ""}}

    for k in range(2):  # fold 2 is still training
        (cv / f"fold{k}").mkdir()
        done = {"epochs_run": 4, "best_epoch": 3, "best_val_competition_dice": 0.61 + k / 100,
                "wall_time_s": 750,
                "averaged": {"val_competition_dice": 0.7 + k / 100}}  # fmt: skip
        (cv / f"fold{k}" / "done.json").write_text(json.dumps(done))
    folds = [{"fold": k, "counts": {"n_images": 10}, "metrics": metrics(0.8 + k / 100)}
             for k in range(2)]  # fmt: skip
    oof = {"split": "oof", "counts": {"n_images": 20}, "metrics": metrics(0.805), "folds": folds,
           "operating_point_description": "threshold 0.4",
           "operating_point_source": "searched"}  # fmt: skip
    (cv / "eval" / "oof").mkdir(parents=True)
    (cv / "eval" / "oof" / "summary.json").write_text(json.dumps(oof))
    assert discover(cv)["cvs"] == [cv]
    text = re.sub(r"(<[^>]+>)+", "|", render_report(cv))
    assert "Cross-validation: 3 folds" in text
    assert "|fold 0|4|3|0.6100|0.7000|12.5|10|0.8000|" in text
    assert "|fold 1|4|3|0.6200|0.7100|12.5|10|0.8100|" in text
    assert "|fold 2|not finished|" in text
    assert "|pooled|20|0.8050|" in text
    assert "Ensemble operating point: threshold 0.4" in text


def test_metrics_table_shows_full_size_and_model_size_side_by_side(tmp_path):
    from ptxseg.reporting.html_report import metrics_section

    def metrics(value):
        return {"dice_per_image": {"value": value, "kind": "per-image", "description": "comp"}}

    summary = {
        "split": "test",
        "scored_at": "full size: masks at the original resolution against the original RLE",
        "metrics": metrics(0.8072),
        "model_size": {"scored_at": "model size", "metrics": metrics(0.8096)},
    }
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    text = re.sub(r"(<[^>]+>)+", "|", metrics_section("test", tmp_path))
    assert "|full size|95% interval|n|model size|" in text
    assert "|dice_per_image|per-image|0.8072|–|0.8096|" in text  # no interval in an old summary
    assert "full size: masks at the original resolution" in text
