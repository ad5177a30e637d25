"""`ptxseg cv`: which folds run, resume, the options record, the ensemble file; end to end."""

import json
from pathlib import Path

import pytest
from siim_folders import fold_member, synthetic_work

from ptxseg.cli import main
from ptxseg.config import load_config
from ptxseg.experiments import cross_validation
from ptxseg.inference.ensemble import read_ensemble, store_model_operating_point
from ptxseg.model.operating_point import OperatingPoint


class FakeTrainer:
    """Records the folds it trains and writes what `fit` leaves behind (the run summary)."""

    def __init__(self, fail_on=None):
        self.calls, self.fail_on = [], fail_on

    def __call__(self, config):
        fold = config.data.fold
        self.calls.append((fold, config.trainer.resume))
        if fold == self.fail_on:
            raise RuntimeError(f"fold {fold} broke")
        run = config.trainer.out
        Path(run).mkdir(parents=True, exist_ok=True)
        (Path(run) / "train_summary.json").write_text(
            json.dumps({"epochs_run": 2, "train_images": 10, "wall_time_s": 1.5})
        )
        return Path(run)


def make_config(out, work="work"):
    return lambda k: cross_validation.fold_config(
        out, k, work, overrides={"model.encoder": "resnet18", "trainer.epochs": 2}
    )


def test_folds_run_once_and_resume(tmp_path):
    out = tmp_path / "cv"
    trainer = FakeTrainer(fail_on=2)
    with pytest.raises(RuntimeError, match="fold 2 broke"):
        cross_validation.run_folds(out, [0, 1, 2], make_config(out), trainer)
    assert trainer.calls == [(0, False), (1, False), (2, False)]
    assert (
        cross_validation.fold_done(out, 0)["fold"] == 0
        and cross_validation.fold_done(out, 2) is None
    )
    # fold 2 was interrupted after writing a checkpoint: the rerun continues it
    (out / "fold2" / "checkpoints").mkdir(parents=True)
    (out / "fold2" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    trainer = FakeTrainer()
    events = []
    done = cross_validation.run_folds(
        out, [0, 1, 2], make_config(out), trainer, lambda *e: events.append(e[:2])
    )
    assert trainer.calls == [(2, True)]  # finished folds skipped, fold 2 resumed
    assert events == [("skipped", 0), ("skipped", 1), ("resumed", 2), ("done", 2)]
    assert sorted(done) == [0, 1, 2]
    assert cross_validation.training_budget(out, 3) == {
        "folds": 3,
        "epochs": [2, 2, 2],
        "train_images": 30,
        "wall_time_s": 4.5,
    }


def test_fold_config_sets_the_fold_work_and_run_folder(tmp_path):
    config = cross_validation.fold_config(
        tmp_path, 3, tmp_path / "work", "demo", {"trainer.epochs": 7}
    )
    assert config.data.fold == 3 and config.data.work == str(tmp_path / "work")
    assert config.trainer.out == str(tmp_path / "fold3") and config.trainer.epochs == 7
    assert config.model.encoder == load_config("demo").model.encoder


def test_folds_to_run_shards_the_folds():
    assert cross_validation.select_folds(5, None) == [0, 1, 2, 3, 4]
    assert cross_validation.select_folds(5, "1/2") == [1, 3]
    assert cross_validation.select_folds(5, "0/2") == [0, 2, 4]
    with pytest.raises(ValueError, match="--folds-to-run"):
        cross_validation.select_folds(5, "2/2")


def test_other_options_in_the_same_folder_are_an_error(tmp_path):
    spec = {"data": "w", "folds": 5, "config": "demo", "overrides": {"trainer.epochs": 3}}
    cross_validation.write_spec(tmp_path, spec)
    cross_validation.write_spec(tmp_path, spec)  # the same: resuming
    with pytest.raises(ValueError, match="other options.*trainer.epochs"):
        cross_validation.write_spec(tmp_path, dict(spec, overrides={"trainer.epochs": 4}))


def test_ensemble_of_the_folds_keeps_its_operating_point(tmp_path):
    for k in range(2):
        fold_member(tmp_path / f"fold{k}" / "model", seed=k, fold=k)
    path = cross_validation.make_ensemble(tmp_path, 2)
    spec = read_ensemble(path)
    assert spec.folds == [0, 1] and spec.members[1] == (tmp_path / "fold1" / "model").resolve()
    op = OperatingPoint.plain(0.4, tta="none", input_size=64)
    store_model_operating_point(path, op)
    cross_validation.make_ensemble(tmp_path, 2)  # rerun: unchanged members, point kept
    assert read_ensemble(path).operating_point == op


def test_the_fold_count_must_match_the_work_folder(tmp_path):
    work = synthetic_work(tmp_path, n_images=12, size=32, folds=2)
    with pytest.raises(ValueError, match="holds 2 folds, not 5"):
        cross_validation.check_folds(work, 5)
    cross_validation.check_folds(work, 2)


@pytest.mark.slow
def test_cli_cv_end_to_end_resumes_and_reports(tmp_path, capsys):
    work = synthetic_work(tmp_path, n_images=24, size=64, folds=3)
    out = tmp_path / "cv"
    args = ["cv", "--data", str(work), "--folds", "3", "--config", "demo", "--encoder",
            "resnet18", "--epochs", "2", "--average-top", "2", "--positive-fraction", "0.8:0.4",
            "--no-progress", "--tta", "hflip", "--out", str(out)]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--folds-to-run", "1/3"])
    assert exit_info.value.code == 0
    assert "folds [0, 2] are not" in capsys.readouterr().out
    assert not (out / "ensemble.json").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "fold 1: finished before, skipped" in text and "pooled" in text
    spec = read_ensemble(out)
    assert spec.folds == [0, 1, 2] and spec.operating_point.tta == "hflip"
    for k in range(3):
        done = json.loads((out / f"fold{k}" / "done.json").read_text())
        assert done["averaged"]["checkpoint"] == "checkpoints/averaged.ckpt"
        config = json.loads((out / f"fold{k}" / "model" / "ptxseg.json").read_text())["config"]
        assert config["data"]["fold"] == k and config["data"]["positive_fraction"] == "0.8:0.4"
    oof = json.loads((out / "eval" / "oof" / "summary.json").read_text())
    assert len(oof["folds"]) == 3
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(out)])
    html = (out / "report.html").read_text()
    assert "Cross-validation: 3 folds" in html and "OOF competition Dice" in html


def test_run_cv_trains_its_shard_and_waits_for_the_others(tmp_path):
    work = synthetic_work(tmp_path, n_images=12, size=32, folds=2)
    options = cross_validation.CvOptions(
        work,
        2,
        tmp_path / "cv",
        "demo",
        {"model.encoder": "resnet18", "trainer.epochs": 2},
        folds_to_run="1/2",
    )
    trainer = FakeTrainer()
    outcome = cross_validation.run_cv(options, train=trainer)
    assert trainer.calls == [(1, False)] and outcome.todo == [1]
    assert outcome.missing == [0] and outcome.oof is None and list(outcome.finished) == [1]
    spec = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert spec["overrides"]["trainer.epochs"] == 2 and spec["folds"] == 2
    with pytest.raises(ValueError, match="holds 2 folds, not 3"):
        cross_validation.run_cv(cross_validation.CvOptions(work, 3, tmp_path / "other"))
    assert not (tmp_path / "other").exists()  # bad options write nothing
