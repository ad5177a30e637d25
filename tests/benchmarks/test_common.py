"""The benchmark harness: timing, explicit baselines, error cells, tables with the machine."""

import numpy as np
import pytest

from ptxseg.benchmarks.common import (
    Timing,
    add_ratios,
    environment_lines,
    error_text,
    percentile,
    read_table_csv,
    rows_to_markdown,
    timed,
    write_table,
)


def test_timed_warms_up_then_repeats_and_syncs():
    calls, syncs = [], []
    timing = timed(
        lambda: calls.append(1), items=4, warmup=2, repeats=3, sync=lambda: syncs.append(1)
    )
    assert len(calls) == 5 and len(timing.seconds) == 3 and len(syncs) == 4
    assert timing.items == 4 and timing.rate > 0


def test_timed_runs_at_least_min_time():
    timing = timed(lambda: None, warmup=0, repeats=1, min_time=0.05)
    assert len(timing.seconds) > 1


def test_timing_statistics():
    t = Timing((0.1, 0.2, 0.4), items=2)
    assert t.p50 == 0.2 and t.rate == pytest.approx(10.0)
    assert t.best_rate == pytest.approx(20.0)
    assert t.mean_rate == pytest.approx(6 / 0.7)


def test_percentile_matches_numpy():
    values = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0]
    for q in (0, 50, 95, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_ratios_refer_to_the_named_baseline_of_each_group():
    rows = [
        {"name": "a", "prec": "fp32", "ips": 10.0},
        {"name": "b", "prec": "fp32", "ips": 25.0},
        {"name": "a", "prec": "bf16", "ips": 20.0},
        {"name": "b", "prec": "bf16", "ips": 30.0},
        {"name": "c", "prec": "int8", "ips": 5.0},
    ]
    add_ratios(rows, "ips", lambda r: r["name"] == "a", group=lambda r: r["prec"])
    assert [r.get("speedup") for r in rows] == [1.0, 2.5, 1.0, 1.5, None]


def test_a_failed_baseline_gives_no_ratio():
    rows = [{"name": "a", "ips": ""}, {"name": "b", "ips": 3.0}]
    add_ratios(rows, "ips", lambda r: r["name"] == "a")
    assert "speedup" not in rows[1]


def test_error_text_is_one_bounded_line():
    text = error_text(ValueError("first line\nsecond line " + "x" * 500))
    assert text.startswith("ValueError: first line") and "second" not in text
    assert len(text) <= 300


def test_tables_name_the_machine_the_baseline_and_round_trip(tmp_path):
    columns = {"name": "Name", "ips": "Images/s", "error": "Error"}
    rows = [{"name": "a|b", "ips": 12.5, "error": ""}, {"name": "c", "ips": "", "error": "boom"}]
    paths = write_table(tmp_path, "t", "A table", columns, rows, baseline="a", notes="N.")
    md = paths["md"].read_text()
    assert md.startswith("# A table\n") and "- baseline: a" in md and md.rstrip().endswith("N.")
    for line in environment_lines():
        assert line in md
    assert "instruction sets:" in md and "torch " in md and "- GPU: " in md
    assert "a\\|b" in md
    assert read_table_csv(paths["csv"]) == [
        {"name": "a|b", "ips": 12.5, "error": ""},
        {"name": "c", "ips": "", "error": "boom"},
    ]
    assert "Error" not in rows_to_markdown(rows[:1], columns)  # empty columns left out
