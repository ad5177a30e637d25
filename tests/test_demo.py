"""The demo pipeline end to end at a tiny scale, and its resumability."""

import pytest

from ptxseg.demo import DemoSettings, run_demo


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
    )
    report = run_demo(tmp_path, settings)
    assert report == tmp_path / "report.html" and report.stat().st_size > 10_000
    for path in (
        "siim/train-rle.csv",
        "work/manifest.csv",
        "runs/resnet18/checkpoints/best.ckpt",
        "runs/resnet18/eval/test/summary.json",
        "benchmark/benchmark.csv",
    ):
        assert (tmp_path / path).is_file(), path
    assert "Demo results" in capsys.readouterr().out
    best = tmp_path / "runs/resnet18/checkpoints/best.ckpt"
    stamp = best.stat().st_mtime_ns
    run_demo(tmp_path, settings)  # every step is found done and skipped
    assert best.stat().st_mtime_ns == stamp
