"""An operating-system error on output is one line and exit 1 or 2, never a traceback (exit 3
is for bugs): a read-only output folder for predict and prepare, a full disk, a damaged
`last.ckpt` for `train --resume`."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess

import pytest
from predict_helpers import make_checkpoint

from ptxseg.cli import main


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from ptxseg.data.synthetic import generate_dataset
    from ptxseg.data.work_folder import PrepareOptions, prepare_work_folder

    root = tmp_path_factory.mktemp("oserrors")
    generate_dataset(root / "siim", n_images=6, size=64, seed=2, positive_fraction=0.5)
    images, csv = root / "siim" / "dicom-images-train", root / "siim" / "train-rle.csv"
    prepare_work_folder(images, csv, root / "work", PrepareOptions(size=64, val=0.2, test=0.2))
    (root / "scans").mkdir()
    for path in sorted(images.rglob("*.dcm"))[:3]:
        shutil.copy(path, root / "scans" / path.name)
    make_checkpoint(root / "m.ckpt", "resnet18", 64)
    return {"root": root, "images": images, "csv": csv, "work": root / "work"}


def one_line(argv, capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as done:
        code = int(done.code or 0)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return code, lines[0]


def predict_args(inputs, out):
    root = inputs["root"]
    return ["predict", root / "scans", "-c", root / "m.ckpt", "-o", out, "--workers", "0"]


def prepare_args(inputs, out):
    args = ["prepare", "--images", inputs["images"], "--annotations", inputs["csv"]]
    return [*args, "--out", out, "--size", "64", "--workers", "1"]


@pytest.fixture
def read_only(tmp_path):
    """A read-only folder: a read-only tmpfs mounted there (as root, where allowed), or a folder
    without write permission (as another user)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)])
    if mounted.returncode != 0:
        pytest.skip("cannot make a read-only folder here (root without mount)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.parametrize("command", ["predict", "prepare"])
def test_a_read_only_output_folder_is_one_line(inputs, read_only, capsys, command):
    args = predict_args if command == "predict" else prepare_args
    for out in (read_only, read_only / "new"):
        code, line = one_line(args(inputs, out), capsys)
        assert code == 2 and f"cannot write to --out {out}" in line
        assert "choose a writable folder" in line or "permissions" in line


def test_a_full_disk_at_summary_csv_is_one_line_and_exit_1(inputs, tmp_path, monkeypatch, capsys):
    from ptxseg.inference import main_loop

    def full(path, rows):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(main_loop, "write_summary", full)
    out = tmp_path / "out"
    code, line = one_line(predict_args(inputs, out), capsys)
    assert code == 1
    assert line.startswith(f"error: {out / 'summary.csv'}: No space left on device")
    assert "free some space" in line and "what was finished is kept" in line
    monkeypatch.undo()
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:  # freed: the rerun finishes from what was kept
        main([str(a) for a in predict_args(inputs, out)])
    assert done.value.code == 0
    assert "skipped (already done) 3" in capsys.readouterr().err


def test_an_output_that_fails_mid_run_ends_the_run_in_one_line(
    inputs, tmp_path, monkeypatch, capsys
):
    """A read-only or full disk met by the writers: not one error row per image, one line."""
    import ptxseg.inference.outputs as outputs

    def read_only(path, mask):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(outputs, "write_mask", read_only)
    out = tmp_path / "out"
    code, line = one_line(predict_args(inputs, out), capsys)
    assert code == 1 and "Read-only file system" in line and str(out / "masks") in line


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs (root)")
def test_a_really_full_disk_is_one_line(inputs, tmp_path, capsys):
    """A tmpfs with room for a few files: predict's writers meet a real ENOSPC."""
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "nr_inodes=12", "tmpfs", str(small)])
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        code, line = one_line(predict_args(inputs, small / "out"), capsys)
    finally:
        subprocess.run(["umount", str(small)], check=True)
    assert code in (1, 2) and "No space left on device" in line


def test_train_resume_from_a_damaged_last_ckpt_is_one_line(inputs, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    whole = (inputs["root"] / "m.ckpt").read_bytes()
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(whole[: len(whole) // 2])
    argv = ["train", "--data", inputs["work"], "--out", run, "--resume", "--no-progress"]
    code, line = one_line(argv, capsys)
    assert code == 2 and f"cannot resume from {last}" in line and "restore the file" in line
    assert last.read_bytes() == whole[: len(whole) // 2]  # left as it was, for the user
    last.write_bytes(whole)  # complete, but weights only: no optimizer state to resume
    code, line = one_line(argv, capsys)
    assert code == 2 and "optimizer_states" in line
