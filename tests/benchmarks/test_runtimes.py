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
    peak, how = cpu_peak_gflops()
    assert "FLOP/cycle" in how or "unknown" in how
