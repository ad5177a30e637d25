"""Subgroups: levels counted as the manifest says, intervals, and only Holm-surviving
differences called out."""

import csv

import numpy as np
import pytest

from ptxseg.evaluation.subgroups import (
    MIN_IMAGES,
    age_band,
    read_subgroups_csv,
    spacing_bins,
    subgroup_table,
    subgroup_values,
    width_bin,
)


def manifest_rows(n=80, seed=0):
    rng = np.random.default_rng(seed)
    rows = {}
    for i in range(n):
        rows[f"img{i}"] = {
            "image_id": f"img{i}",
            "patient_sex": "M" if i % 3 else "F",
            "patient_age": str(int(rng.integers(10, 95))),
            "view_position": "AP" if i % 2 else "PA",
            "width": "1024" if i % 5 else "2500",
            "pixel_spacing": f"{rng.choice([0.139, 0.143, 0.168, 0.194])}",
        }
    return rows


def per_image(truth, predicted, dice, score):
    return {
        "truth_area": np.asarray(truth) * 100,
        "predicted_area": np.asarray(predicted) * 90,
        "dice": np.asarray(dice, float),
        "score": np.asarray(score, float),
    }


def test_levels_and_counts_follow_the_manifest():
    rows = manifest_rows()
    ids = list(rows)
    values = subgroup_values(ids, rows, None)
    assert set(values) == {"sex", "age", "view", "width", "pixel_spacing"}
    truth = np.arange(80) % 4 == 0
    table, summary = subgroup_table(
        values, per_image(truth, truth, np.ones(80), truth * 0.9), ids, resamples=200
    )
    by = {(r["variable"], r["value"]): r for r in table}
    for variable, key, transform in (
        ("sex", "patient_sex", str.upper),
        ("view", "view_position", str.upper),
        ("age", "patient_age", age_band),
        ("width", "width", width_bin),
    ):
        expected = {}
        for image_id in ids:
            level = transform(rows[image_id][key])
            expected[level] = expected.get(level, 0) + 1
        got = {value: r["n"] for (v, value), r in by.items() if v == variable}
        assert got == expected, variable
    assert by[("view", "AP")]["n_positive"] == int(truth[1::2].sum())
    assert by[("width", "> 2048 px")]["n"] == 16
    small = [r for r in table if r["n"] < MIN_IMAGES]
    assert all(r["flag"] for r in small) and all(not r["flag"] for r in table if r not in small)
    assert summary["n_tests"] == table[0]["n_tests"] > 0


def test_a_real_difference_is_called_out_after_holm_and_noise_is_not():
    n = 200
    rng = np.random.default_rng(1)
    drain = (np.arange(n) % 2).astype(str)
    truth = np.arange(n) % 4 < 2
    found = np.where(drain == "1", True, rng.random(n) < 0.3) & truth  # drained: all found
    noise = rng.integers(0, 2, n).astype(str)
    values = {"chest_drain": list(drain), "coin": list(noise)}
    per = per_image(truth, found | (~truth & (rng.random(n) < 0.1)), found * 1.0, found * 0.8)
    table, summary = subgroup_table(values, per, [f"p{i}" for i in range(n)], resamples=1000)
    by = {(r["variable"], r["value"]): r for r in table}
    drained, undrained = by[("chest_drain", "1")], by[("chest_drain", "0")]
    assert drained["sensitivity"] == 1.0 and undrained["sensitivity"] < 0.5
    assert drained["compared_with"] == "" or undrained["compared_with"] == "chest_drain 1"
    tested = undrained if undrained["compared_with"] else drained
    assert tested["holm_sensitivity"] < 0.05 and "sensitivity" in tested["called_out"]
    assert not any(r["called_out"] for r in table if r["variable"] == "coin")
    assert summary["n_tests"] == 6  # two variables of two levels, three metrics each
    assert any("chest_drain" in c for c in summary["called_out"])
    assert tested["sensitivity_ci_low"] <= tested["sensitivity"] <= tested["sensitivity_ci_high"]


def test_spacing_terciles_and_user_csv(tmp_path):
    labels = spacing_bins(["0.1", "0.2", "0.3", "", "0.15", "0.25"])
    assert labels[3] == "unknown" and len(set(labels) - {"unknown"}) == 3
    path = tmp_path / "meta.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([["ImageId", "chest_drain"], ["a", "1"], ["b", "0"]])
    assert read_subgroups_csv(path, ["a", "b", "c"]) == {"chest_drain": ["1", "0", "unknown"]}
    (tmp_path / "bad.csv").write_text("id,x\n1,2\n")
    with pytest.raises(ValueError, match="no ImageId column"):
        read_subgroups_csv(tmp_path / "bad.csv", ["a"])


def test_size_classes_of_the_true_mask():
    mask = np.zeros((1024, 1024), bool)
    mask[200:700, 0:200] = True  # a wide band along the patient's right chest wall
    rows = {"a": {"view_position": "PA"}, "b": {"view_position": "PA"}}
    masks = {0: (mask, 0.143), 1: (np.zeros_like(mask), 0.143)}
    values = subgroup_values(["a", "b"], rows, lambda i: masks[i])
    assert values["size_bts"] == ["large", "no pneumothorax"]
    assert values["size_accp"][1] == "no pneumothorax"
