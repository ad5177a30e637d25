"""Out-of-fold evaluation: each fold through its own member, pooled, operating point stored."""

import csv
import json

import numpy as np
import pytest
from siim_folders import fold_member, synthetic_work

from ptxseg.cli import main
from ptxseg.data.folds import read_folds
from ptxseg.evaluation.evaluate_split import evaluate_checkpoint
from ptxseg.evaluation.oof import evaluate_oof
from ptxseg.inference.ensemble import EnsembleError, read_ensemble, write_ensemble
from ptxseg.inference.predictor import Predictor
from ptxseg.util import schemas


@pytest.fixture(scope="module")
def cv_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("oof")
    work = synthetic_work(root, n_images=24, size=64, folds=3)
    members = [fold_member(root / "cv" / f"fold{k}" / "model", seed=k, fold=k) for k in range(3)]
    write_ensemble(root / "cv" / "ensemble.json", members, [0, 1, 2])
    return work, root / "cv"


def test_oof_scores_each_fold_with_its_own_member_and_pools_them(cv_folder, tmp_path):
    work, cv = cv_folder
    summary = evaluate_oof(cv, work, tmp_path / "oof", tta="hflip", progress=False)
    assert summary["schema_version"] == schemas.EVALUATION_SUMMARY
    folds = read_folds(work)
    assert [f["counts"]["n_images"] for f in summary["folds"]] == [len(f) for f in folds]
    assert summary["counts"]["n_images"] == sum(len(f) for f in folds)
    # the pooled competition Dice is the image-weighted mean of the folds' (a per-image mean)
    weighted = sum(f["competition_dice"] * f["counts"]["n_images"] for f in summary["folds"])
    assert summary["competition_dice"] == pytest.approx(weighted / summary["counts"]["n_images"])
    # the operating point was searched on the pooled OOF predictions and stored with its TTA
    spec = read_ensemble(cv)
    assert spec.operating_point.to_dict() == summary["operating_point"]
    assert spec.operating_point.tta == "hflip" and spec.operating_point.input_size == 64
    assert spec.validation["split"] == "oof"
    assert "searched on the pooled out-of-fold" in summary["operating_point_source"]
    with open(tmp_path / "oof" / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    fold_of = {i: k for k, ids in enumerate(folds) for i in ids}
    assert {r["image_id"]: int(r["fold"]) for r in rows} == fold_of
    # fold 1's numbers are those of member 1 evaluated alone on fold 1 at the same point
    op = spec.operating_point
    alone = evaluate_checkpoint(
        Predictor(cv / "fold1" / "model", tta="hflip"),
        work,
        tmp_path / "alone",
        "fold1",
        overrides={"top": op.top, "bottom": op.bottom, "min_area": op.min_area},
        progress=False,
    )
    assert alone["competition_dice"] == pytest.approx(summary["folds"][1]["competition_dice"])
    # a second run uses the stored point and its TTA
    again = evaluate_oof(cv, work, tmp_path / "oof2", progress=False)
    assert again["operating_point_source"] == "stored with the ensemble"
    assert again["tta"] == "hflip" and again["competition_dice"] == summary["competition_dice"]


def test_oof_needs_one_member_per_fold(cv_folder, tmp_path):
    work, cv = cv_folder
    two = write_ensemble(
        tmp_path / "two.json", [cv / "fold0" / "model", cv / "fold1" / "model"], [0, 1]
    )
    with pytest.raises(EnsembleError, match="folds \\[0, 1\\] but .* has 3 folds"):
        evaluate_oof(two, work, tmp_path / "x", progress=False)
    plain = fold_member(tmp_path / "plain", seed=7, fold=None)  # trained on the train split
    loose = write_ensemble(tmp_path / "loose.json", [cv / "fold0" / "model", plain])
    assert read_ensemble(loose).folds == [0, None]  # folds come from the members' configs
    with pytest.raises(EnsembleError, match="has no fold"):
        evaluate_oof(loose, work, tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_a_fold_model_searches_on_its_own_fold_and_an_ensemble_of_them_refuses_val(
    cv_folder, tmp_path
):
    work, cv = cv_folder
    single = tmp_path / "single"
    import shutil

    shutil.copytree(cv / "fold2" / "model", single)
    summary = evaluate_checkpoint(single, work, tmp_path / "ev", split="test", progress=False)
    assert summary["operating_point_source"].startswith("searched on the fold2 split")
    fresh = write_ensemble(tmp_path / "e.json", [cv / f"fold{k}" / "model" for k in range(3)])
    with pytest.raises(ValueError, match="--split oof"):
        evaluate_checkpoint(fresh, work, tmp_path / "ev2", split="test", progress=False)


def test_cli_evaluate_oof_prints_folds_side_by_side(cv_folder, tmp_path, capsys):
    work, cv = cv_folder
    out = tmp_path / "oof-cli"
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--checkpoint", str(cv), "--data", str(work), "--split", "oof",
              "--out", str(out)])  # fmt: skip
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "out of fold: 3 folds" in text and "pooled" in text
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["folds"]) == 3 and np.isfinite(summary["competition_dice"])
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--checkpoint", str(cv), "--checkpoint", str(cv), "--data", str(work),
              "--split", "oof", "--out", str(out)])  # fmt: skip
    assert exit_info.value.code == 2
    # the test split through the ensemble uses the stored point
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--checkpoint", str(cv / "ensemble.json"), "--data", str(work),
              "--split", "test", "--out", str(tmp_path / "test")])  # fmt: skip
    assert exit_info.value.code == 0
    test = json.loads((tmp_path / "test" / "summary.json").read_text())
    assert test["operating_point_source"] == "stored with the model"
    assert test["encoder"] == "resnet18" and test["tta"] == summary["tta"]
