"""One name for every file of a run, an evaluation and a cross-validation folder."""

import dataclasses
from pathlib import Path

import pytest

from ptxseg.util.run_folders import DONE, CvFolder, EvalFolder, RunFolder


def test_run_folder_names_what_train_writes(tmp_path):
    run = RunFolder(tmp_path)
    assert run.config == tmp_path / "config.yaml"
    assert run.best_checkpoint == tmp_path / "checkpoints" / "best.ckpt"
    assert run.last_checkpoint == tmp_path / "checkpoints" / "last.ckpt"
    assert run.model == tmp_path / "model"
    assert run.metrics == tmp_path / "metrics.csv"
    assert run.train_summary == tmp_path / "train_summary.json"
    assert run.done == tmp_path / DONE
    # the output guard of `train` owns every name the folder's properties point at
    for path in (run.config, run.checkpoints, run.model, run.metrics, run.logs, run.train_summary):
        assert path.relative_to(tmp_path).parts[0] in RunFolder.WRITES


def test_an_evaluation_lives_under_the_run_by_split(tmp_path):
    ev = RunFolder(tmp_path).eval("val")
    assert isinstance(ev, EvalFolder) and ev.root == tmp_path / "eval" / "val"
    assert ev.summary.name == "summary.json" and ev.per_image.name == "per_image.csv"
    assert ev.subgroups.name == "subgroups.csv" and ev.probabilities("val").name == "probs-val.npz"


def test_cv_folder_holds_runs_per_fold_and_the_oof_evaluation(tmp_path):
    cv = CvFolder(tmp_path)
    assert cv.spec == tmp_path / "cv.json"
    assert cv.fold(2).model == tmp_path / "fold2" / "model"
    assert cv.oof.summary == tmp_path / "eval" / "oof" / "summary.json"


def test_folders_are_frozen_values():
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunFolder(Path("a")).root = Path("b")
    assert RunFolder(Path("a")) == RunFolder(Path("a"))
