"""Failed files on the terminal: many files with one failure are one line; every failure stays in
the command's own table."""

from __future__ import annotations

import csv
import shutil

import pytest
from predict_helpers import make_checkpoint

from ptxseg.cli import main
from ptxseg.cli.errors import generic, summarise_failures


def test_failures_that_differ_only_by_their_file_are_one_line():
    failures = [(f"/d/{i}.dcm", f"ImageReadError: /d/{i}.dcm is empty") for i in range(5000)]
    failures.insert(1, ("/d/x.png", "ImageReadError: /d/x.png is not a readable image"))
    lines = summarise_failures(failures, where="out.csv")
    assert lines == [
        "5000 files: ImageReadError: <file> is empty (e.g. /d/0.dcm; all listed in out.csv)",
        "/d/x.png: ImageReadError: /d/x.png is not a readable image",
    ]
    assert generic("a.dcm: bad a.dcm", "/x/a.dcm") == "<file>: bad <file>"


def test_few_failures_keep_a_line_each_and_many_kinds_are_cut_short():
    few = [(f"{i}.dcm", "bad") for i in range(3)]
    assert summarise_failures(few, "t") == ["0.dcm: bad", "1.dcm: bad", "2.dcm: bad"]
    many = [(f"{i}.dcm", f"bad {i * 7}") for i in range(30)]
    lines = summarise_failures(many, "t", most=5)
    assert len(lines) == 5 and lines[-1] == "... 26 more files, all listed in t"


def test_predict_summarises_thousands_of_empty_files(tmp_path, capsys):
    from ptxseg.data.synthetic import generate_dataset

    generate_dataset(tmp_path / "siim", n_images=1, size=64, seed=0)
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(next((tmp_path / "siim").rglob("*.dcm")), scans / "good.dcm")
    for i in range(200):
        (scans / f"empty-{i:03d}.dcm").write_bytes(b"")
    make_checkpoint(tmp_path / "m.ckpt", "resnet18", 64)
    argv = ["predict", scans, "-c", tmp_path / "m.ckpt", "-o", tmp_path / "out", "--workers", "0"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in argv])
    assert done.value.code == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error ")]
    assert len(lines) == 1 and lines[0].startswith("error 200 files: ")
    with open(tmp_path / "out" / "summary.csv", newline="") as handle:
        statuses = [row["status"] for row in csv.DictReader(handle)]
    assert statuses.count("error") == 200 and statuses.count("ok") == 1
