"""Paired comparison of evaluations: the difference, its interval and p, and refusals."""

import csv

import numpy as np
import pytest

from ptxseg.cli import main
from ptxseg.evaluation.compare import (
    CompareError,
    average_over_seeds,
    compare_evaluations,
    read_evaluation,
)


def write_eval(folder, dice, score, truth_area, ids=None, groups=None):
    folder.mkdir(parents=True)
    ids = ids or [f"img{i}" for i in range(len(dice))]
    with (folder / "per_image.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "truth_area", "dice", "max_probability", "patient_group"])
        for i, image_id in enumerate(ids):
            g = groups[i] if groups else image_id
            writer.writerow([image_id, truth_area[i], dice[i], score[i], g])
    return folder


@pytest.fixture
def two_models(tmp_path):
    rng = np.random.default_rng(0)
    n = 120
    truth = (rng.random(n) < 0.4) * 50
    good = np.where(truth > 0, rng.uniform(0.6, 0.9, n), 1.0)
    bad = np.where(truth > 0, good - 0.3, np.where(rng.random(n) < 0.2, 0.0, 1.0))
    score_good = (truth > 0) * 0.6 + rng.random(n) * 0.4
    score_bad = (truth > 0) * 0.2 + rng.random(n) * 0.8
    groups = [f"p{i // 2}" for i in range(n)]
    a = write_eval(tmp_path / "good" / "eval" / "test", good, score_good, truth, groups=groups)
    b = write_eval(tmp_path / "bad" / "eval" / "test", bad, score_bad, truth, groups=groups)
    return a, b


def test_a_clear_difference_has_an_interval_above_zero(two_models):
    result = compare_evaluations([read_evaluation(d) for d in two_models], resamples=500)
    pair = result["pairs"][0]
    assert (pair["a"], pair["b"]) == ("good", "bad")
    for metric in ("competition_dice", "positive_dice", "roc_auc"):
        entry = pair["metrics"][metric]
        assert entry["difference"] > 0 and entry["ci_low"] > 0 and entry["p"] < 0.01
        assert entry["sentence"].startswith("good − bad: +")
    assert pair["metrics"]["roc_auc"]["delong"]["p"] < 0.01
    assert result["n_patients"] == 60 and result["resampled"] == "patients"


def test_the_same_model_twice_shows_no_evidence(two_models):
    a, _ = two_models
    result = compare_evaluations([read_evaluation(a, "x"), read_evaluation(a, "y")], 200)
    assert (
        "no evidence of a difference"
        in result["pairs"][0]["metrics"]["competition_dice"]["sentence"]
    )


def test_three_models_get_holm(two_models, tmp_path):
    a, b = two_models
    third = read_evaluation(a, "copy")
    result = compare_evaluations([read_evaluation(a), read_evaluation(b), third], 200)
    assert len(result["pairs"]) == 3
    for pair in result["pairs"]:
        entry = pair["metrics"]["competition_dice"]
        assert entry["p_holm"] >= entry["p"]


def test_different_images_are_refused_in_one_line(two_models, tmp_path, capsys):
    a, _ = two_models
    other = write_eval(tmp_path / "other", [1.0] * 3, [0.1] * 3, [0, 0, 0])
    with pytest.raises(CompareError, match="evaluated different images"):
        compare_evaluations([read_evaluation(a), read_evaluation(other)])
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(a), str(other)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "different images" in err and "\n" not in err


def test_compare_command_writes_its_tables(two_models, tmp_path, capsys):
    out = tmp_path / "cmp"
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", *map(str, two_models), "--out", str(out), "--bootstrap", "200"])
    assert exit_info.value.code == 0
    assert {p.name for p in out.iterdir()} == {"comparison.csv", "comparison.md", "comparison.json"}
    assert "good − bad" in (out / "comparison.md").read_text()


def test_seeds_are_averaged_image_by_image(two_models):
    a, b = (read_evaluation(d) for d in two_models)
    mean = average_over_seeds([a, b], "both")
    np.testing.assert_allclose(mean.dice, (a.dice + b.dice) / 2)
    assert mean.name == "both"
