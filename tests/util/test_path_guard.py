"""The rules that keep a command's outputs off its inputs, the walk that skips outputs, the lock
of an output folder and the marks that say who made a folder."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ptxseg.util import path_guard
from ptxseg.util.path_guard import FILE, FOLDER, REPLACE, GuardError, Input, Output


@pytest.fixture
def tree(tmp_path):
    """scans/ with two DICOMs, a model folder, a checkpoint file and a work folder."""
    (tmp_path / "scans" / "sub").mkdir(parents=True)
    (tmp_path / "scans" / "a.dcm").write_bytes(b"a")
    (tmp_path / "scans" / "sub" / "b.dcm").write_bytes(b"b")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "ptxseg.json").write_text("{}")
    (tmp_path / "model" / "model.safetensors").write_bytes(b"w")
    (tmp_path / "a.ckpt").write_bytes(b"c")
    (tmp_path / "work").mkdir()
    return tmp_path


def refused(inputs, outputs, match: str) -> None:
    with pytest.raises(GuardError, match=match) as err:
        path_guard.check(inputs, outputs)
    assert "\n" not in str(err.value)


def test_an_output_that_is_an_input_is_refused(tree):
    refused([Input(tree / "a.ckpt", "-c")], [Output(tree / "a.ckpt", "--out", FILE)], "also the")
    refused([Input(tree / "scans", "INPUTS", walked=True)], [Output(tree / "scans")], "also the")


def test_the_same_file_by_another_name_is_the_same_file(tree):
    os.symlink(tree / "a.ckpt", tree / "link.ckpt")
    refused([Input(tree / "link.ckpt")], [Output(tree / "a.ckpt", kind=FILE)], "also the")
    refused([Input(tree / "a.ckpt")], [Output(tree / "work" / ".." / "a.ckpt", kind=FILE)], "also")


def test_an_output_inside_a_model_folder_is_refused_also_for_a_file_in_it(tree):
    model = Input(tree / "model", "-c")
    refused([model], [Output(tree / "model" / "ptxseg.json", kind=FILE)], "model folder")
    refused([model], [Output(tree / "model" / "eval")], "model folder")
    weights = Input(tree / "model" / "model.safetensors")
    refused([weights], [Output(tree / "model" / "x.onnx", kind=FILE)], "model folder")


def test_inside_a_walked_folder_is_allowed_inside_a_folder_read_whole_is_not(tree):
    path_guard.check([Input(tree / "scans", walked=True)], [Output(tree / "scans" / "out")])
    refused([Input(tree / "work", "--data")], [Output(tree / "work" / "eval")], "read whole")
    refused([Input(tree / "a.ckpt")], [Output(tree / "a.ckpt" / "x", kind=FILE)], "input file")


def test_an_output_holding_an_input_is_refused_where_it_would_be_deleted_or_rewritten(tree):
    ckpt = Input(tree / "a.ckpt", "-c")
    refused([ckpt], [Output(tree, "--out", REPLACE)], "replaced whole")
    refused([ckpt], [Output(tree, "--out", FOLDER)], "writes its own files")
    refused([ckpt], [Output(tree, "--out", FOLDER, owns=("*.ckpt",))], "writes its own files")
    path_guard.check([ckpt], [Output(tree, "--out", FOLDER, owns=("masks", "summary.csv"))])


def test_an_output_of_the_wrong_kind_is_refused(tree):
    refused([], [Output(tree / "work", "--out", FILE)], "is a folder")
    refused([], [Output(tree / "a.ckpt", "--out", FOLDER)], "is a file")


def test_check_targets_finds_a_copy_that_would_overwrite_its_source(tree):
    source = tree / "scans" / "a.dcm"
    with pytest.raises(GuardError, match="overwrite the input"):
        path_guard.check_targets([tree / "scans" / "a.dcm"], [source])
    path_guard.check_targets([tree / "fixed" / "a.dcm"], [source])


def test_the_walk_skips_the_outputs_and_folders_of_results(tree):
    (tree / "scans" / "out").mkdir()
    (tree / "scans" / "out" / "seg.dcm").write_bytes(b"s")
    (tree / "scans" / "old").mkdir()
    (tree / "scans" / "old" / "sr.dcm").write_bytes(b"s")
    path_guard.mark(tree / "scans" / "old", "predict", "results")
    (tree / "scans" / "synth").mkdir()
    (tree / "scans" / "synth" / "c.DCM").write_bytes(b"c")
    path_guard.mark(tree / "scans" / "synth", "synth", "data")
    found = path_guard.walk(tree / "scans", (".dcm",), skip=[tree / "scans" / "out"])
    names = [p.relative_to(tree / "scans").as_posix() for p in found]
    assert names == ["a.dcm", "sub/b.dcm", "synth/c.DCM"]
    assert path_guard.walk(tree / "scans", (".dcm",), skip=[tree / "scans"]) == []


def test_marks_say_who_made_a_folder(tmp_path):
    assert path_guard.made_by(tmp_path) is None
    path_guard.mark(tmp_path, "synth", "data", seed=3)
    assert path_guard.made_by(tmp_path) == {"command": "synth", "holds": "data", "seed": 3}
    (tmp_path / path_guard.MADE_BY).write_text("[1, 2]")
    assert path_guard.made_by(tmp_path) is None
    with pytest.raises(ValueError, match="holds"):
        path_guard.mark(tmp_path, "x", "everything")


def test_a_second_run_in_a_claimed_folder_is_refused_and_the_lock_ends_with_the_run(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with path_guard.claim(out) as lock:
        assert lock.read_text().startswith(f"ptxseg pid {os.getpid()}")
        with pytest.raises(GuardError, match="being written by another run"), path_guard.claim(out):
            pass
        # another process sees the lock too
        code = (
            "import sys; from ptxseg.util import path_guard\n"
            "try:\n    path_guard.claim(sys.argv[1]).__enter__()\n"
            "except path_guard.GuardError as e:\n    print(e); sys.exit(7)\n"
        )
        done = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True)
        assert done.returncode == 7 and b"pid" in done.stdout
    assert lock.read_text() == ""  # released and emptied: the folder's bytes hold no pid
    with path_guard.claim(out):
        pass


def test_a_claim_that_wrote_nothing_leaves_no_folder(tmp_path):
    with path_guard.claim(tmp_path / "new"):
        pass
    assert not (tmp_path / "new").exists()
    with pytest.raises(RuntimeError), path_guard.claim(tmp_path / "failed"):
        raise RuntimeError("a usage error in the command")
    assert not (tmp_path / "failed").exists()
    with path_guard.claim(tmp_path / "kept"):
        (tmp_path / "kept" / "x").write_text("x")
    assert (tmp_path / "kept" / "x").is_file()


def test_secondary_ranks_of_a_distributed_run_are_told_apart(monkeypatch):
    for name in path_guard.RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not path_guard.secondary_process()
    monkeypatch.setenv("RANK", "0")
    assert not path_guard.secondary_process()
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert path_guard.secondary_process()
