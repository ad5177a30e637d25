"""kill -9 at random moments of `prepare`, `predict` and `train`; the rerun must give what a clean
run gives, and no process of the killed command may stay behind.

The killed command runs as a real subprocess (`python -m ptxseg ...`). The default suite kills
`prepare` and `predict` once each, in the middle of their work (once the first outputs appear),
and makes the clean run and the rerun in-process to save interpreter start-ups; `-m slow` kills all
three at several random moments of a clean run's duration (`FAULT_KILLS`, default 6), every run a
subprocess.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from dicom_files import chest_like, tiny_bomb, write_dicom
from predict_helpers import make_checkpoint
from process_tree import descendants, wait_gone

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
PTXSEG = [sys.executable, "-m", "ptxseg"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(args: list[str], timeout: float = 600, in_process: bool = False) -> tuple[int, float]:
    """Run a command to its end; (exit code, seconds). `in_process` saves the start-up time of a
    new interpreter (the clean reference run of the quick tests)."""
    start = time.monotonic()
    if in_process:
        from ptxseg.cli import main

        try:
            main(args)
        except SystemExit as exit_:
            return int(exit_.code or 0), time.monotonic() - start
        return 0, time.monotonic() - start
    done = subprocess.run(
        [*PTXSEG, *args], env=ENV, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode in (0, 1), done.stderr[-3000:]
    return done.returncode, time.monotonic() - start


def _marked(marker: str) -> list[int]:
    """Live processes whose command line names `marker` (forked workers inherit it)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker in cmdline.read_bytes().decode(errors="replace"):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return [p for p in found if p != os.getpid()]


def kill_at(args: list[str], moment, marker: str) -> bool:
    """Start the command, SIGKILL its main process at `moment` (seconds, or a condition that
    becomes true); False if it ended first. Checks that every process of the command ends with
    it."""
    proc = subprocess.Popen(
        [*PTXSEG, *args],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    due = (
        moment if callable(moment) else (lambda t0=time.monotonic(): time.monotonic() - t0 > moment)
    )
    while not due():
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    children = descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stray = [p for p in set(children) | set(_marked(marker)) if p != proc.pid]
    assert wait_gone(stray, timeout=15), f"processes outlived the killed command: {stray}"
    return True


RUN_RECORD = ("run.json",)  # predict's timings: the only output that differs from run to run


def digest(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(part in skip for part in p.relative_to(folder).parts)
    }


def _kill_moments(clean_seconds: float, quick, seed: int) -> list:
    if quick:
        return [quick]  # a condition: the middle of the work
    rng = random.Random(seed)
    n = int(os.environ.get("FAULT_KILLS", "6"))
    return sorted(rng.uniform(0.1, 0.9) * clean_seconds for _ in range(n))


# ------------------------------------------------------------------------------ inputs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Synthetic SIIM files with two bad DICOMs, a bomb, a checkpoint and a prepared work folder."""
    root = tmp_path_factory.mktemp("faults")
    from ptxseg.data.synthetic import generate_dataset
    from ptxseg.data.work_folder import PrepareOptions, prepare_work_folder

    generate_dataset(root / "siim", n_images=48, size=128, seed=0, positive_fraction=0.5)
    images = root / "siim" / "dicom-images-train"
    good = next(images.rglob("*.dcm")).read_bytes()
    (images / "trunc.dcm").write_bytes(good[: len(good) // 2])
    write_dicom(images / "nopix.dcm", chest_like(128), pixel_data=False)
    with (root / "siim" / "train-rle.csv").open("a") as f:
        f.write("trunc, -1\nnopix, -1\n")
    predict_in = root / "predict-in"
    predict_in.mkdir()
    for path in sorted(images.rglob("*.dcm"))[:16]:
        (predict_in / path.name).write_bytes(path.read_bytes())
    (predict_in / "bomb.jpg").write_bytes(tiny_bomb("jpeg"))
    work = root / "work"
    prepare_work_folder(
        images, root / "siim" / "train-rle.csv", work, PrepareOptions(size=64, val=0.2, test=0.1)
    )
    return {
        "images": images,
        "csv": root / "siim" / "train-rle.csv",
        "predict_in": predict_in,
        "checkpoint": make_checkpoint(root / "m.ckpt", "resnet18", 64),
        "work": work,
    }


# ------------------------------------------------------------------------------ prepare


def _prepare_args(inputs, out: Path) -> list[str]:
    return [
        "prepare",
        "--images",
        str(inputs["images"]),
        "--annotations",
        str(inputs["csv"]),
        "--out",
        str(out),
        "--size",
        "96",
        "--workers",
        "2",
        "--val",
        "0.2",
        "--test",
        "0.1",
    ]


def check_prepare(inputs, tmp_path, quick: bool) -> int:
    reference = tmp_path / "clean"
    code, seconds = run(_prepare_args(inputs, reference), in_process=bool(quick))
    assert code == 1  # the two bad files are skipped and listed
    expected = digest(reference)
    assert "splits.json" in expected and "cache/96/train-images.npy" in expected
    kills = 0
    started = lambda: any((out / "cache" / "96").glob(".*.tmp"))  # noqa: E731
    for k, moment in enumerate(_kill_moments(seconds, quick and started, seed=1)):
        out = tmp_path / f"killed-{k}"
        kills += kill_at(_prepare_args(inputs, out), moment, marker=str(out))
        assert run(_prepare_args(inputs, out), in_process=bool(quick))[0] == 1
        when = f"{moment:.1f} s" if not callable(moment) else "halfway"
        assert digest(out) == expected, f"prepare killed {when} differs"
    return kills


# ------------------------------------------------------------------------------ predict


def _predict_args(inputs, out: Path) -> list[str]:
    return [
        "predict",
        str(inputs["predict_in"]),
        "-c",
        str(inputs["checkpoint"]),
        "-o",
        str(out),
        "--workers",
        "2",
        "--batch-size",
        "2",
    ]


def check_predict(inputs, tmp_path, quick: bool) -> int:
    reference = tmp_path / "clean"
    code, seconds = run(_predict_args(inputs, reference), in_process=bool(quick))
    assert code == 1  # the bomb is an error row
    expected = digest(reference, skip=RUN_RECORD)
    assert len([k for k in expected if k.startswith("findings/")]) == 16
    kills = 0
    halfway = lambda: len(list((out / "findings").glob("*.json"))) >= 6  # noqa: E731
    for k, moment in enumerate(_kill_moments(seconds, quick and halfway, seed=2)):
        out = tmp_path / f"killed-{k}"
        kills += kill_at(_predict_args(inputs, out), moment, marker=str(out))
        assert run(_predict_args(inputs, out), in_process=bool(quick))[0] == 1
        when = f"{moment:.1f} s" if not callable(moment) else "halfway"
        assert digest(out, skip=RUN_RECORD) == expected, f"predict killed {when} differs"
    return kills


# ------------------------------------------------------------------------------ train --resume


def _train_args(inputs, out: Path, resume: bool) -> list[str]:
    args = ["train", "--data", str(inputs["work"]), "--size", "64", "--out", str(out)]
    args += ["--encoder", "resnet18", "--encoder-weights", "none", "--epochs", "4"]
    args += ["--batch-size", "4", "--workers", "0", "--aug", "full", "--no-progress"]
    args += ["--seed", "3", "--lr", "0.001"]
    return [*args, "--resume"] if resume else args


def _run_state(run_dir: Path) -> dict:
    """What a resumed run must reproduce: weights, optimiser, epochs, metrics."""
    state = {}
    for name in ("best.ckpt", "last.ckpt"):
        ckpt = torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=True)
        state[name] = (ckpt["epoch"], ckpt["global_step"], ckpt["state_dict"])
        state[name + " optimizer"] = ckpt["optimizer_states"]
    with open(run_dir / "metrics.csv", newline="") as handle:
        state["metrics"] = list(csv.DictReader(handle))
    summary = json.loads((run_dir / "train_summary.json").read_text())
    state["summary"] = {k: summary[k] for k in ("epochs_run", "best_epoch", "best_val_dice")}
    return state


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def check_train(inputs, tmp_path, quick: bool) -> int:
    reference = tmp_path / "clean"
    code, seconds = run(_train_args(inputs, reference, resume=False))
    assert code == 0
    expected = _run_state(reference)
    kills = 0
    for k, moment in enumerate(_kill_moments(seconds, quick, seed=3)):
        out = tmp_path / f"killed-{k}"
        kills += kill_at(_train_args(inputs, out, resume=False), moment, marker=str(out))
        resume = (out / "checkpoints" / "last.ckpt").is_file()
        assert run(_train_args(inputs, out, resume=resume))[0] == 0
        got = _run_state(out)
        for key in expected:
            assert _same(got[key], expected[key]), f"train killed at {moment:.1f} s: {key} differs"
    return kills


# ------------------------------------------------------------------------------ the tests

CHECKS = {"prepare": check_prepare, "predict": check_predict, "train": check_train}


@pytest.mark.parametrize("command", ["prepare", "predict"])
def test_a_killed_command_reruns_to_the_clean_result(inputs, tmp_path, command):
    assert CHECKS[command](inputs, tmp_path, quick=True) == 1  # killed before it ended


@pytest.mark.slow
@pytest.mark.parametrize("command", ["prepare", "predict", "train"])
def test_kill_9_at_random_moments(inputs, tmp_path, command):
    kills = CHECKS[command](inputs, tmp_path, quick=False)
    print(f"\n{command}: {kills} runs killed with SIGKILL, every rerun equal to the clean run")
    assert kills >= 1
