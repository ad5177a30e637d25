"""Benchmark: FLOP counting, one row per configuration, error rows, and the written tables."""

import csv

import pytest
import torch

from ptxseg.benchmarks.backbones import (
    COLUMNS,
    BenchConfig,
    count_gflops_per_image,
    measure,
    measure_isolated,
    read_benchmark_csv,
    write_benchmark,
)
from ptxseg.cli import main

TINY = dict(size=64, batch_size=1, warmup=0, iters=2)


def test_gflops_of_a_single_convolution_is_two_flops_per_mac():
    conv = torch.nn.Conv2d(1, 4, kernel_size=3, padding=1, bias=False)
    expected = 2 * 3 * 3 * 1 * 4 * 32 * 32 / 1e9
    assert count_gflops_per_image(conv, 32) == pytest.approx(expected)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"size": 100}, "multiple of 32"),
        ({"precision": "fp16"}, "fp32, bf16"),
        ({"iters": 0}, "iters must be"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BenchConfig("resnet18", **kwargs)


def test_measure_returns_a_full_row():
    row = measure(BenchConfig("resnet18", **TINY))
    assert row["error"] == ""
    assert row["params_m"] == pytest.approx(14.32, abs=0.01)  # U-Net resnet18, 1 channel in
    assert row["gflops_per_image"] > 0
    assert 0 < row["latency_p50_ms"] <= row["latency_p95_ms"]
    # both are rounded to 2 decimals
    assert row["images_per_s"] == pytest.approx(1000 / row["latency_p50_ms"], rel=0.01, abs=0.006)
    assert row["train_step_ms"] > 0 and row["infer_mem_mb"] >= 0
    assert set(row) == set(COLUMNS)


def test_bad_encoder_gives_an_error_row_not_an_exception():
    row = measure(BenchConfig("no-such-encoder", **TINY))
    assert "no-such-encoder" in row["error"]
    assert row["encoder"] == "no-such-encoder" and row["params_m"] == ""


@pytest.mark.slow
def test_isolated_measure_runs_in_a_fresh_process():
    row = measure_isolated(BenchConfig("no-such-encoder", **TINY))
    assert "no-such-encoder" in row["error"]


def test_written_tables_round_trip(tmp_path):
    rows = [
        {**{k: "" for k in COLUMNS}, "encoder": "a", "size": 64, "params_m": 1.5, "error": ""},
        {**{k: "" for k in COLUMNS}, "encoder": "b|c", "size": 64, "error": "KeyError: x"},
    ]
    rows[0]["latency_p50_ms"] = 2.0
    paths = write_benchmark(rows, tmp_path, baseline="a")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "benchmark.csv",
        "benchmark.md",
        "benchmark.png",
    ]
    back = read_benchmark_csv(paths["csv"])
    assert back[0]["params_m"] == 1.5 and back[1]["error"] == "KeyError: x"
    md = paths["md"].read_text()
    assert "- baseline: a at the same precision" in md and "instruction sets:" in md
    assert "| Params (M) |" in md and "b\\|c" in md
    assert "| Train step (ms) |" not in md  # empty columns are left out


def test_cli_writes_one_row_per_configuration(tmp_path):
    argv = ["benchmark", "--encoders", "resnet18,nope", "--size", "64", "--batch-size", "1"]
    argv += ["--warmup", "0", "--iters", "1", "--no-isolate", "--out", str(tmp_path)]
    try:
        main(argv)
    except SystemExit as exc:
        assert exc.code == 0
    with open(tmp_path / "benchmark.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["encoder"] for r in rows] == ["resnet18", "nope"]
    assert rows[0]["error"] == "" and "nope" in rows[1]["error"]
    assert rows[0]["speedup"] == "1.0" and rows[1]["speedup"] == ""  # against resnet18


def test_compiled_configuration_is_its_own_row(monkeypatch):
    monkeypatch.setenv("PTXSEG_COMPILE_BACKEND", "aot_eager")
    row = measure(BenchConfig("resnet18", **{**TINY, "train": False}, compile=True))
    assert row["error"] == "" and row["compile"] == "yes" and row["images_per_s"] > 0
    assert measure(BenchConfig("resnet18", **{**TINY, "train": False}))["compile"] == "no"


def test_configs_cross_encoders_precisions_and_compile_modes():
    from ptxseg.benchmarks.backbones import backbone_configs, compile_modes

    assert compile_modes("auto", "cuda:0") == ["off", "on"] and compile_modes("auto", "cpu") == [
        "off"
    ]
    with pytest.raises(ValueError, match="--compile 'fast'"):
        compile_modes("fast", "cpu")
    template = BenchConfig("", 64, 2, iters=1)
    configs = backbone_configs(["a", "b"], ["fp32", "bf16"], ["off", "on"], template)
    assert [(c.encoder, c.precision, c.compile) for c in configs[:3]] == [
        ("a", "fp32", False),
        ("b", "fp32", False),
        ("a", "bf16", False),
    ]
    assert len(configs) == 8 and configs[-1].compile and configs[-1].size == 64
    with pytest.raises(ValueError, match="precision 'fp8'"):
        backbone_configs(["a"], ["fp8"], ["off"], template)
