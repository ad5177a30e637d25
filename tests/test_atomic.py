"""Atomic writes leave either the old file or the new one, never a part."""

import pytest

from ptxseg import atomic


def test_write_if_changed_skips_identical_content(tmp_path):
    path = tmp_path / "a.txt"
    assert atomic.write_if_changed(path, "one")
    stamp = path.stat().st_mtime_ns
    assert not atomic.write_if_changed(path, b"one")
    assert path.stat().st_mtime_ns == stamp
    assert atomic.write_if_changed(path, "two") and path.read_text() == "two"


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    path = atomic.write_text(tmp_path / "sub" / "b.json", "old")

    def failing(handle):
        handle.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic.write_through(path, failing)
    assert path.read_text() == "old"
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]


def test_write_csv_keeps_the_columns_in_order(tmp_path):
    rows = [{"b": 2, "a": 1, "extra": "x"}, {"a": None}]
    path = atomic.write_csv(tmp_path / "t.csv", ["a", "b"], rows)
    assert path.read_text() == "a,b\n1,2\n,\n"


def test_save_figure_writes_a_png_and_closes_it(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    path = atomic.save_figure(fig, tmp_path / "f.png", dpi=20)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)
