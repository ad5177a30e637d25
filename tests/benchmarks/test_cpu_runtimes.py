"""benchmark-runtime: one row per path, ratios, Dice vs fp32, an error cell instead of a crash."""

import pytest
from predict_helpers import ConfidentModel, TinyUnet

from ptxseg.benchmarks.cpu_runtimes import (
    RuntimeBenchOptions,
    benchmark_model,
    cpu_peak_gflops,
    flop_per_cycle,
    mark_auto,
    write_tables,
)
from ptxseg.util.system import CpuInfo


def test_rows_per_path_with_eager_reference_and_table(tmp_path):
    paths = ["torch eager fp32", "onnxruntime fp32", "tensorrt"]
    rows = benchmark_model(TinyUnet(), RuntimeBenchOptions(2, paths, min_time=0.0))
    assert [r["path"] for r in rows] == ["torch eager fp32", "onnxruntime fp32"]
    assert rows[0]["speedup"] == 1.0 and rows[0]["dice_vs_fp32"] == 1.0
    assert rows[1]["dice_vs_fp32"] > 0.99 and rows[1]["images_per_s"] > 0
    text = write_tables(rows, tmp_path).read_text()
    assert "| torch eager fp32 |" in text and (tmp_path / "runtime-benchmark.csv").is_file()
    assert "- baseline: torch eager fp32" in text and "instruction sets:" in text


AVX2 = CpuInfo("AMD EPYC 7B13", 2, frozenset({"avx2", "fma", "hypervisor"}))
ZEN4 = CpuInfo("AMD EPYC 9B14", 2, frozenset({"avx2", "fma", "avx512f", "avx512_bf16"}))
XEON = CpuInfo("Intel Xeon Platinum 8481C", 2, frozenset({"avx2", "fma", "avx512f"}))


@pytest.mark.parametrize(
    ("cpu", "flop", "named"),
    [
        (AVX2, 32, "AVX2: 2 FMA units x 8 fp32 lanes"),
        (ZEN4, 32, "AVX-512 run as two 256-bit halves"),
        (XEON, 64, "AVX-512: 2 FMA units x 16 fp32 lanes"),
        (CpuInfo("old", 1, frozenset({"avx"})), 16, "128-bit SSE"),
    ],
)
def test_peak_fits_the_instruction_set_and_names_its_assumption(cpu, flop, named):
    assert flop_per_cycle(cpu)[0] == flop
    peak, how = cpu_peak_gflops(cores=2, mhz=2000.0, cpu=cpu)
    assert peak == 2 * flop * 2.0 and f"x {flop} FLOP/cycle x 2.00 GHz" in how and named in how
    assert "those that share a core count once" in how
    assert ("virtual machine" in how) == ("hypervisor" in cpu.flags)
    peak, how = cpu_peak_gflops(cores=4, mhz=0.0, cpu=cpu)
    assert peak != peak and "clock unknown" in how


def test_the_auto_column_marks_the_path_the_choice_would_take(monkeypatch):
    from ptxseg.inference import choice

    monkeypatch.setattr(choice, "cpu_info", lambda: ZEN4)
    rows = [
        {"path": "torch eager fp32", "images_per_s": 10.0, "dice_vs_fp32": 1.0},
        {"path": "torch fp32 channels_last", "images_per_s": 11.0, "dice_vs_fp32": 1.0},
        {"path": "onnxruntime fp32", "images_per_s": 17.7, "dice_vs_fp32": 1.0},
        {"path": "openvino bf16", "images_per_s": 37.8, "dice_vs_fp32": 0.996},
        {"path": "openvino int8 (QDQ model)", "images_per_s": 40.0, "dice_vs_fp32": 0.914},
        {"path": "onnxruntime int8, plain int8", "images_per_s": 50.0, "dice_vs_fp32": 1.0},
    ]
    mark_auto(rows)
    assert [r["path"] for r in rows if r.get("auto")] == ["openvino bf16"]
    monkeypatch.setattr(choice, "cpu_info", lambda: AVX2)
    for row in rows:
        row.pop("auto", None)
    mark_auto(rows)
    assert [r["path"] for r in rows if r.get("auto")] == ["onnxruntime fp32"]


def test_int8_rows_are_checked_and_each_remedy_gets_a_row(tmp_path):
    """On synthetic images with a sure model: the int8 row is the checked one, and the ladder's
    recipes each have their row with the check's Dice beside the test Dice."""
    paths = ["torch eager fp32", "onnxruntime int8 (static QDQ)"]
    options = RuntimeBenchOptions(2, paths, min_time=0.0, int8_remedies=True)
    rows = benchmark_model(ConfidentModel(), options)
    by_path = {r["path"]: r for r in rows}
    assert "error" not in by_path["onnxruntime int8 (static QDQ)"], rows
    remedies = [r for r in rows if r["path"].startswith("onnxruntime int8, ")]
    assert [r["path"].split(", ", 1)[1] for r in remedies[:2]] == [
        "plain int8",
        "+ per-channel weights",
    ]
    assert all("check_dice" in r and "calibrated on" in r["recipe"] for r in remedies)


def test_a_path_without_the_baseline_has_no_ratio():
    rows = benchmark_model(TinyUnet(), RuntimeBenchOptions(2, ["onnxruntime fp32"], min_time=0.0))
    assert rows[0]["images_per_s"] > 0 and "speedup" not in rows[0]
    assert rows[0]["dice_vs_fp32"] == ""


def test_command_writes_the_table_for_random_weight_encoders(tmp_path):
    from ptxseg.cli import main

    argv = ["benchmark-runtime", "--encoder", "resnet18", "--size", "64", "--batch-size", "2"]
    argv += ["--runtimes", "torch eager fp32", "--no-end-to-end", "--min-time", "0"]
    argv += ["--rounds", "1", "--out", str(tmp_path)]
    try:
        main(argv)
    except SystemExit as exc:
        assert exc.code in (0, None)
    text = (tmp_path / "runtime-benchmark.md").read_text()
    assert "| torch eager fp32 | resnet18 | 64 | 2 |" in text and "synthetic images" in text
