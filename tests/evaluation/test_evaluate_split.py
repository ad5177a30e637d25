"""Evaluation on a hand-written work folder: TTA, operating point resolution, outputs, CLI."""

import csv
import json

import numpy as np
import pytest
import torch
from torch import nn

from ptxseg.data.dataset import cache_paths
from ptxseg.data.rle import rle_encode
from ptxseg.evaluation.eval_files import choose_panels
from ptxseg.evaluation.evaluate_split import evaluate_checkpoint
from ptxseg.model.checkpoint import read_operating_point as load_operating_point
from ptxseg.model.operating_point import OperatingPoint
from ptxseg.util import schemas

SIZE = 32


class BrightnessModel(nn.Module):
    """Stand-in segmentation model: the logit of a pixel is its brightness, centred at 0.5."""

    input_size = SIZE
    encoder = "stand-in"

    def __init__(self, operating_point=None):
        super().__init__()
        self.operating_point = operating_point
        self.scale = nn.Parameter(torch.tensor(12.0))

    def forward(self, x):
        return (x - 0.5) * self.scale


def make_work(root, n=6, seed=0):
    """A work folder as `ptxseg prepare` writes it: manifest, splits, cache at SIZE.

    Even images are positive: a bright square on the truth. Images 1 and 3 of every split carry a
    fainter false-positive blob (brightness 0.7) on an empty truth."""
    rng = np.random.default_rng(seed)
    rows, splits = [], {"seed": seed, "train": [], "val": [], "test": []}
    for split in ("train", "val", "test"):
        images = (rng.random((n, SIZE, SIZE)) * 60).astype(np.uint8)  # dark background
        masks = np.zeros((n, SIZE, SIZE), np.uint8)
        ids = [f"{split}-{i}" for i in range(n)]
        for i in range(n):
            if i % 2 == 0:
                r, c, s = 4 + i, 3 + 2 * i, 6 + i
                masks[i, r : r + s, c : c + s] = 1
                images[i, r : r + s, c : c + s] = 230
            elif i in (1, 3):
                images[i, 20:23, 5 + i : 8 + i] = 180
        paths = cache_paths(root, SIZE, split)
        paths["images"].parent.mkdir(parents=True, exist_ok=True)
        np.save(paths["images"], images)
        np.save(paths["masks"], masks)
        paths["ids"].write_text(json.dumps(ids))
        splits[split] = ids
        rows += [(i, split, int(masks[k].any()), masks[k]) for k, i in enumerate(ids)]
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["image_id", "split", "has_pneumothorax", "height", "width", "rle_encoding"]
        )
        writer.writerows((i, s, m, SIZE, SIZE, "relative") for i, s, m, _ in rows)
    with open(root / "annotations.csv", "w", newline="") as f:  # originals at the cache size
        writer = csv.writer(f)
        writer.writerow(["ImageId", "EncodedPixels"])
        writer.writerows((i, rle_encode(mask.astype(bool))) for i, _, _, mask in rows)
    (root / "splits.json").write_text(json.dumps(splits))
    return root


def fake_checkpoint(path, operating_point=None):
    torch.save(
        {"state_dict": {}, "ptxseg": {"config": {}, "operating_point": operating_point}}, path
    )
    return path


# --------------------------------------------------------------------------- operating point


def test_missing_operating_point_is_searched_on_val_and_stored(tmp_path):
    work = make_work(tmp_path / "work")
    ckpt = fake_checkpoint(tmp_path / "model.ckpt")
    model = BrightnessModel()
    summary = evaluate_checkpoint(model, work, tmp_path / "out", checkpoint=ckpt, progress=False)
    stored = load_operating_point(ckpt)
    assert stored is not None and model.operating_point == stored
    # blobs at 0.7 brightness have probability sigmoid(2.4) = 0.917, squares 0.9997: a threshold
    # between them, or the area gate, removes the false positives; val is then perfect
    assert summary["operating_point"] == stored.to_dict()
    assert stored.tta == "none" and stored.input_size == SIZE  # the path it was searched on
    assert summary["operating_point_source"].startswith("searched on the val split and stored")
    assert summary["operating_point_search"]["competition_dice"] == pytest.approx(1.0)
    validation = torch.load(ckpt, weights_only=True)["ptxseg"]["validation"]  # loadable safely
    assert validation["dice_per_image"] == pytest.approx(1.0) and validation["split"] == "val"
    assert summary["competition_dice"] == pytest.approx(1.0)


def test_stored_operating_point_is_used_and_overrides_win(tmp_path):
    work = make_work(tmp_path / "work")
    ckpt = fake_checkpoint(tmp_path / "model.ckpt", {"top": 0.5, "bottom": 0.5, "min_area": 0})
    before = ckpt.read_bytes()
    model = BrightnessModel(OperatingPoint.plain(0.5))
    summary = evaluate_checkpoint(model, work, tmp_path / "a", checkpoint=ckpt, progress=False)
    assert summary["operating_point_source"] == "stored with the model"
    # at 0.5 both blobs of the 6 test images are kept: 2 images score 0
    assert summary["competition_dice"] == pytest.approx(4 / 6)
    assert summary["metrics"]["specificity"]["value"] == pytest.approx(1 / 3)
    summary = evaluate_checkpoint(
        model, work, tmp_path / "b", checkpoint=ckpt, overrides={"threshold": 0.95}, progress=False
    )
    assert summary["operating_point"] == OperatingPoint.plain(0.95).to_dict()
    assert "overridden on the command line: threshold" in summary["operating_point_source"]
    assert summary["competition_dice"] == pytest.approx(1.0)
    assert ckpt.read_bytes() == before  # nothing searched, nothing stored


def test_no_search_without_stored_point_uses_the_default(tmp_path):
    work = make_work(tmp_path / "work")
    summary = evaluate_checkpoint(
        BrightnessModel(), work, tmp_path / "out", search=False, progress=False
    )
    assert summary["operating_point"] == OperatingPoint().to_dict()
    assert summary["operating_point_source"].startswith("default")


# --------------------------------------------------------------------------- outputs


def test_outputs_per_image_csv_summary_roc_and_panels(tmp_path):
    work = make_work(tmp_path / "work")
    out = tmp_path / "out"
    model = BrightnessModel(OperatingPoint.plain(0.5))
    summary = evaluate_checkpoint(model, work, out, tta="hflip", save_probs=True, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [
        "calibration.csv",
        "panels.npz",
        "per_image.csv",
        "probs-test.npz",
        "reliability.png",
        "roc.csv",
        "subgroups.csv",
        "subgroups.png",
        "summary.json",
    ]
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["schema_version"] == schemas.EVALUATION_SUMMARY
    with open(out / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["image_id"] for r in rows] == [f"test-{i}" for i in range(6)]
    assert rows[0]["truth_area"] == "36" and rows[0]["predicted_area"] == "36"
    assert float(rows[0]["dice"]) == 1.0 and rows[0]["has_truth"] == "1"
    assert rows[1]["truth_area"] == "0" and rows[1]["predicted_area"] == "9"
    assert float(rows[1]["dice"]) == 0.0 and rows[1]["has_prediction"] == "1"
    assert rows[5]["has_prediction"] == "0" and float(rows[5]["dice"]) == 1.0
    m = summary["metrics"]
    assert m["dice_per_image"]["kind"] == "per-image" and m["dice_pooled"]["kind"] == "pooled"
    assert m["dice_per_image"]["value"] == pytest.approx(4 / 6)
    assert m["dice_pooled"]["value"] == pytest.approx(2 * 200 / (2 * 200 + 18))  # 36+64+100 px
    assert m["dice_positive_per_image"]["value"] == pytest.approx(1.0)
    assert m["roc_auc"]["value"] == pytest.approx(1.0)  # squares are brighter than blobs
    assert summary["empty_baseline_competition_dice"] == pytest.approx(0.5)
    assert summary["counts"] == {
        "n_images": 6,
        "n_positive": 3,
        "n_negative": 3,
        "n_predicted_positive": 5,
    }
    assert summary["tta"] == "hflip" and summary["split"] == "test"
    with open(out / "roc.csv", newline="") as f:
        roc = list(csv.DictReader(f))
    assert roc[0] == {"fpr": "0", "tpr": "0", "threshold": "inf"}
    assert roc[-1]["fpr"] == "1" and roc[-1]["tpr"] == "1"
    panels = np.load(out / "panels.npz")
    assert panels["images"].shape == (5, SIZE, SIZE) and panels["images"].dtype == np.uint8
    assert set(panels["kinds"]) == {"best", "worst", "false_positive"}  # image 5 is all right
    assert "test-5" not in set(panels["image_ids"])
    assert panels["probabilities"].shape == panels["truths"].shape == panels["masks"].shape
    assert (panels["masks"] == (panels["probabilities"] > 0.5)).all()  # masks = prediction
    from ptxseg.reporting.report_folders import (
        read_panels,  # the report reads truth and prediction apart
    )

    groups = {g["category"]: g for g in read_panels(out / "panels.npz")}
    fp = groups["false_positive"]
    assert not np.any(fp["truths"]) and all(p.any() for p in fp["predictions"])
    probs = np.load(out / "probs-test.npz")
    assert probs["probabilities"].shape == (6, SIZE, SIZE)
    assert not list(out.glob(".*tmp"))


def test_choose_panels_fills_each_kind_then_tops_up():
    per = {
        "truth_area": np.array([10, 10, 0, 0, 10, 0]),
        "predicted_area": np.array([10, 0, 5, 0, 8, 9]),
        "dice": np.array([1.0, 0.0, 0.0, 1.0, 0.5, 0.0]),
    }
    chosen = choose_panels(per, n=4)
    assert chosen == [(0, "best"), (1, "worst"), (5, "false_positive"), (4, "best")]
    assert len(choose_panels(per, n=16)) == 5  # every image with truth or prediction, once


def test_missing_cache_names_prepare_size(tmp_path):
    work = make_work(tmp_path / "work")
    model = BrightnessModel(OperatingPoint())
    model.input_size = 64
    with pytest.raises(FileNotFoundError, match="--size 64"):
        evaluate_checkpoint(model, work, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- real checkpoint + CLI


def _real_checkpoint(path):
    from ptxseg.config import TrainConfig
    from ptxseg.model.unet import build_model

    config = TrainConfig.from_dict(
        {"data": {"size": SIZE}, "model": {"encoder": "resnet18", "encoder_weights": "none"}}
    )
    model = build_model(config)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save(
        {"state_dict": state, "ptxseg": {"config": config.to_dict(), "operating_point": None}},
        path,
    )
    return path


def test_cli_evaluate_end_to_end_with_a_checkpoint(tmp_path):
    from ptxseg.cli import main

    work = make_work(tmp_path / "work", n=3)
    ckpt = _real_checkpoint(tmp_path / "model.ckpt")
    out = tmp_path / "eval"
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--checkpoint", str(ckpt), "--data", str(work), "--out", str(out)])
    assert exit_info.value.code in (0, None)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["input_size"] == SIZE and summary["encoder"] == "resnet18"
    assert load_operating_point(ckpt) == OperatingPoint.from_dict(summary["operating_point"])
    assert 0.0 <= summary["competition_dice"] <= 1.0
    summary2 = evaluate_checkpoint(ckpt, work, tmp_path / "again", progress=False)
    assert summary2["operating_point_source"] == "stored with the model"
    assert summary2["competition_dice"] == pytest.approx(summary["competition_dice"])


def test_cli_evaluate_reports_errors_without_output(tmp_path, capsys):
    from ptxseg.cli import main

    work = make_work(tmp_path / "work", n=2)
    ckpt = fake_checkpoint(tmp_path / "model.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--checkpoint", str(tmp_path / "nope.ckpt"), "--data", str(work),
              "--out", str(tmp_path / "out")])  # fmt: skip
    assert exit_info.value.code == 2
    assert "nope.ckpt not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert ckpt.exists()


# --------------------------------------------------------------------------- evaluate = predict


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Synthetic SIIM-style DICOMs at 128 px, prepared at 64 px, and a random-weight model."""
    from predict_helpers import make_checkpoint

    from ptxseg.data.synthetic import generate_dataset
    from ptxseg.data.work_folder import PrepareOptions, prepare_work_folder

    root = tmp_path_factory.mktemp("full-size")
    generate_dataset(root / "raw", n_images=24, size=128, seed=3, positive_fraction=0.5,
                     progress=False)  # fmt: skip
    options = PrepareOptions(size=64, seed=0, val=0.25, test=0.25)
    prepare_work_folder(root / "raw" / "dicom-images-train", root / "raw" / "train-rle.csv",
                        root / "work", options)  # fmt: skip
    ckpt = make_checkpoint(root / "m.ckpt", "resnet18", 64, {"top": 0.5, "bottom": 0.45,
                           "min_area": 0})  # fmt: skip
    return root, ckpt


@pytest.mark.parametrize("tta", ["none", "hflip"])
def test_evaluate_scores_exactly_the_masks_that_predict_writes(prepared, tta):
    import cv2

    from ptxseg.cli import main
    from ptxseg.data.dataset import FullSizeTruth, read_manifest
    from ptxseg.model.metrics import confusion_counts, dice_scores

    root, ckpt = prepared
    work = root / "work"
    out = root / f"eval-{tta}"
    args = ["evaluate", "--checkpoint", str(ckpt), "--data", str(work)]
    with pytest.raises(SystemExit) as done:
        main([*args, "--out", str(out), "--tta", tta, "--no-search", "--batch-size", "4"])
    assert done.value.code in (0, None)
    test_files = [r["path"] for r in read_manifest(work) if r["split"] == "test"]
    with pytest.raises(SystemExit) as done:
        main(["predict", *test_files, "-c", str(ckpt), "-o", str(root / f"pred-{tta}"),
              "--tta", tta, "--batch-size", "4"])  # fmt: skip
    assert done.value.code in (0, None)
    with open(out / "per_image.csv", newline="") as f:
        rows = {r["image_id"]: r for r in csv.DictReader(f)}
    assert len(rows) == len(test_files) >= 4
    truth = FullSizeTruth(work)
    predicted_any = 0
    for image_id, row in rows.items():
        png = cv2.imread(str(root / f"pred-{tta}" / "masks" / f"{image_id}.png"), 0) > 0
        assert png.shape == truth.shape(image_id) == (128, 128)  # scored at the original size
        counts = confusion_counts(png, truth.mask(image_id))
        assert float(row["dice"]) == pytest.approx(float(dice_scores(*counts[:3])[0]), abs=1e-6)
        assert int(row["predicted_area"]) == int(png.sum())
        predicted_any += bool(png.any())
    assert predicted_any  # the comparison is not between empty masks only
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tta"] == tta and summary["scored_at"].startswith("full size")
    assert summary["model_size"]["scored_at"].startswith("model size")
    assert 0 <= summary["model_size"]["competition_dice"] <= 1


def test_full_size_needs_the_original_annotations_and_says_how_to_get_them(prepared, tmp_path):
    import shutil

    root, ckpt = prepared
    work = tmp_path / "work"
    shutil.copytree(root / "work", work)
    (work / "annotations.csv").unlink()
    with pytest.raises(FileNotFoundError, match="rerun the same `ptxseg prepare`"):
        evaluate_checkpoint(ckpt, work, tmp_path / "out", search=False, progress=False)
    assert not (tmp_path / "out").exists()
    summary = evaluate_checkpoint(
        ckpt, work, tmp_path / "out", search=False, progress=False, resolution="model"
    )
    assert summary["scored_at"].startswith("model size")


def test_evaluate_auto_scores_the_path_predict_would_run(prepared, tmp_path, monkeypatch):
    """`--runtime auto` is checked on the work folder's validation split and the summary says
    which path was scored (measurements faked: onnxruntime fp32 is the fastest here)."""
    from ptxseg.inference import choice, runtimes
    from ptxseg.inference.choice import Measurement
    from ptxseg.util.system import CpuInfo

    avx2 = CpuInfo("AVX2 CPU", 2, frozenset({"avx2", "fma"}))
    monkeypatch.setattr(choice, "cpu_info", lambda: avx2)
    monkeypatch.setattr(runtimes, "cpu_info", lambda: avx2)
    monkeypatch.setenv("PTXSEG_CACHE_DIR", str(tmp_path / "cache"))
    seen = []

    def fake(model, paths, reference, check, **kwargs):
        seen.append(check.source)
        speed = {"torch": 1.0, "onnxruntime": 3.0, "openvino": 2.0}
        return [
            Measurement(rt, prec, images_per_s=speed[rt], reference=(rt, prec) == reference)
            for rt, prec in paths
        ], {}

    monkeypatch.setattr(choice, "measure_paths", fake)
    root, ckpt = prepared
    summary = evaluate_checkpoint(
        ckpt, root / "work", tmp_path / "eval", "test", runtime="auto", precision="auto",
        search=False, progress=False,
    )  # fmt: skip
    assert (summary["runtime"], summary["precision"]) == ("onnxruntime", "fp32")
    assert summary["inference_path"]["chosen_by"] == "auto"
    assert seen == [f"the val split of {root / 'work'}"]
