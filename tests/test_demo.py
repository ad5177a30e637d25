"""The demo pipeline end to end at a tiny scale, and its resumability."""

import json

import pytest

from ptxseg.demo import (
    FIXED_MINUTES,
    MIN_EPOCHS,
    MIN_IMAGES,
    DemoSettings,
    estimate_minutes,
    plan_demo,
    run_demo,
    training_rate,
)

ENCODERS = ("efficientnet-b0", "resnet50", "xception")


def test_a_fast_machine_runs_the_demo_as_asked():
    s = DemoSettings()
    plan = plan_demo(s, {e: 500.0 for e in ENCODERS})
    assert plan.epochs == {"efficientnet-b0": 25, "resnet50": 10, "xception": 10}
    assert plan.n_images == 400 and plan.estimated_minutes <= s.budget_minutes


def test_a_slow_machine_gets_fewer_epochs_and_fits_the_budget():
    s = DemoSettings()
    rates = {"efficientnet-b0": 12.0, "resnet50": 5.0, "xception": 5.0}  # an AVX2 laptop
    wanted = estimate_minutes(400, {"efficientnet-b0": 25, "resnet50": 10, "xception": 10}, rates)
    assert wanted > 30
    plan = plan_demo(s, rates)
    assert plan.estimated_minutes <= s.budget_minutes
    assert all(MIN_EPOCHS <= n <= 25 for n in plan.epochs.values())
    assert plan.epochs["efficientnet-b0"] > plan.epochs["resnet50"]  # the proportions stay


def test_a_very_slow_machine_also_gets_fewer_images_but_never_too_few():
    plan = plan_demo(DemoSettings(), {e: 1.0 for e in ENCODERS})
    assert plan.epochs == {e: MIN_EPOCHS for e in ENCODERS}
    assert MIN_IMAGES <= plan.n_images < 400
    assert plan.to_dict()["estimated_minutes"] == round(plan.estimated_minutes, 1)


def test_estimate_counts_training_validation_and_the_fixed_steps():
    minutes = estimate_minutes(100, {"a": 2}, {"a": 10.0})
    assert minutes == pytest.approx(FIXED_MINUTES + 2 * (70 + 15 / 3) / 10 / 60)


def test_training_rate_is_measured():
    assert training_rate("resnet18", 64, 2, steps=1) > 0


@pytest.mark.slow
def test_tiny_demo_runs_every_step_and_resumes(tmp_path, capsys):
    settings = DemoSettings(
        n_images=24,
        image_size=64,
        size=64,
        encoders=["resnet18"],
        epochs={},
        default_epochs=1,
        batch_size=4,
        budget_minutes=60,
    )
    report = run_demo(tmp_path, settings)
    assert report == tmp_path / "report.html" and report.stat().st_size > 10_000
    for path in (
        "siim/train-rle.csv",
        "work/manifest.csv",
        "runs/resnet18/checkpoints/best.ckpt",
        "runs/resnet18/eval/test/summary.json",
        "benchmark/benchmark.csv",
        "runs/resnet18/model/ptxseg.json",
    ):
        assert (tmp_path / path).is_file(), path
    out = capsys.readouterr().out
    assert "Demo results" in out and "demo plan" in out
    assert json.loads((tmp_path / "plan.json").read_text())["epochs"] == {"resnet18": 1}
    stored = json.loads((tmp_path / "runs/resnet18/model/ptxseg.json").read_text())
    assert stored["operating_point"]["tta"] == "hflip"  # searched with the TTA it is used with
    best = tmp_path / "runs/resnet18/checkpoints/best.ckpt"
    stamp = best.stat().st_mtime_ns
    run_demo(tmp_path, settings)  # every step is found done and skipped
    assert best.stat().st_mtime_ns == stamp
