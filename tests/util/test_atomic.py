"""Atomic writes leave either the old file or the new one, never a part."""

import errno
import os
import stat

import pytest

from ptxseg.util import atomic


@pytest.fixture
def syncs(monkeypatch):
    """What was fsynced and renamed, in order: ("file" / "folder" / "rename", inode)."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        info = os.fstat(fd)
        kind = "folder" if stat.S_ISDIR(info.st_mode) else "file"
        events.append((kind, info.st_ino))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", os.stat(src).st_ino))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def test_a_write_is_fsynced_before_the_rename_and_its_folder_after(tmp_path, syncs):
    path = atomic.write_text(tmp_path / "a.json", "{}")
    file, folder = path.stat().st_ino, tmp_path.stat().st_ino
    assert syncs == [("file", file), ("rename", file), ("folder", folder)]


def test_a_written_folder_is_fsynced_before_it_takes_its_place(tmp_path, syncs):
    def fill(folder):
        (folder / "sub").mkdir()
        (folder / "sub" / "w.bin").write_bytes(b"w")

    out = atomic.write_folder(tmp_path / "model", fill)
    weights, sub = (out / "sub" / "w.bin").stat().st_ino, (out / "sub").stat().st_ino
    renamed = syncs.index(("rename", out.stat().st_ino))
    assert ("file", weights) in syncs[:renamed] and ("folder", sub) in syncs[:renamed]
    assert syncs[-1] == ("folder", tmp_path.stat().st_ino)


def test_an_os_error_names_the_file_not_its_temporary_name(tmp_path):
    def full(handle):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as err:
        atomic.write_through(tmp_path / "summary.csv", full)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "summary.csv")
    assert list(tmp_path.iterdir()) == []


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
