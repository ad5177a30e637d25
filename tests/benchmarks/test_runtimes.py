"""benchmark-runtime: one row per path, ratios, Dice vs fp32, an error cell instead of a crash."""

import numpy as np
from predict_helpers import TinyUnet

from ptxseg.benchmarks.runtimes import benchmark_model, cpu_peak_gflops, dice, write_tables


def test_dice_of_mask_stacks():
    a = np.zeros((2, 4, 4), bool)
    assert dice(a, a) == 1.0
    b = a.copy()
    b[0, :2] = True
    c = a.copy()
    c[0, :1] = True
    assert dice(b, c) == 2 * 4 / (8 + 4)


def test_rows_per_path_with_eager_reference_and_table(tmp_path):
    rows = benchmark_model(
        TinyUnet(), 2, paths=["torch eager fp32", "onnxruntime fp32", "tensorrt"], min_time=0.0
    )
    assert [r["path"] for r in rows] == ["torch eager fp32", "onnxruntime fp32"]
    assert rows[0]["speedup"] == 1.0 and rows[0]["dice_vs_fp32"] == 1.0
    assert rows[1]["dice_vs_fp32"] > 0.99 and rows[1]["images_per_s"] > 0
    text = write_tables(rows, tmp_path).read_text()
    assert "| torch eager fp32 |" in text and (tmp_path / "runtime-benchmark.csv").is_file()
    assert "- baseline: torch eager fp32" in text and "instruction sets:" in text


def test_peak_is_cores_times_64_flop_per_cycle_times_clock():
    assert cpu_peak_gflops(cores=2, mhz=2000.0) == (256.0, "2 cores x 64 FLOP/cycle x 2.00 GHz")
    peak, how = cpu_peak_gflops(cores=4, mhz=0.0)
    assert peak != peak and how == "4 cores, clock unknown"


def test_a_path_without_the_baseline_has_no_ratio():
    rows = benchmark_model(TinyUnet(), 2, paths=["onnxruntime fp32"], min_time=0.0)
    assert rows[0]["images_per_s"] > 0 and "speedup" not in rows[0]
    assert rows[0]["dice_vs_fp32"] == ""
