"""What predict's durability and rerun checks cost, side by side in one run.

1. Writing: `predict` of the same files with atomic writes as they are (each file fsynced before
   its rename, its folder after) and with fsync turned off in this process.
2. Resuming a finished folder of N files: the listing-only fast path as it was (no input check),
   with the input check (one stat per file, no read), after every input was touched (same size,
   new mtime: every file hashed), and hashing every input outright.

Inputs are the real SIIM DICOMs of ../shared/data/siim-real (or synthetic 1024 px ones), copied
to N names. The model is a random-weight ResNet18 U-Net at 64 px, so the model costs little and
the files' reading and writing show. Usage (writes benchmarks/results/resume-2core.md):

    PYTHONPATH=src python benchmarks/resume_cost.py --files 1200 --fsync-files 200
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from unittest import mock

HERE = Path(__file__).resolve().parent
REAL = HERE.parents[1] / "shared" / "data" / "siim-real"


def sources(tmp: Path) -> list[Path]:
    found = sorted(REAL.rglob("*.dcm")) if REAL.is_dir() else []
    if found:
        return found
    from ptxseg.data.synthetic import generate_dataset

    generate_dataset(tmp / "synth", 12, size=1024, seed=0, progress=False)
    return sorted((tmp / "synth").rglob("*.dcm"))


def copies(originals: list[Path], folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True)
    made = []
    for i in range(n):
        target = folder / f"img-{i:05d}.dcm"
        shutil.copyfile(originals[i % len(originals)], target)
        made.append(target)
    return made


def seconds(fn) -> float:
    """Wall seconds of one call, through the benchmark harness."""
    from ptxseg.benchmarks.common import timed

    return timed(fn, warmup=0, repeats=1).p50


def write_rows(run, tmp: Path, few: list[Path]) -> list[tuple]:
    """predict and atomic.write_bytes with fsync as it is and with fsync off."""
    from ptxseg.util import atomic

    with mock.patch("os.fsync"):
        no_sync = seconds(lambda: run(tmp / "w-nosync", few))
    synced = seconds(lambda: run(tmp / "w-sync", few))
    rows = [("predict, fsync off", len(few), no_sync, "")]
    rows.append(("predict, fsync file + folder", len(few), synced, f"{synced / no_sync:.2f}x"))
    blob = os.urandom(2048)  # about a findings JSON
    small = [tmp / "atomic" / f"{i}.json" for i in range(len(few))]
    small[0].parent.mkdir()
    with mock.patch("os.fsync"):
        plain = seconds(lambda: [atomic.write_bytes(p, blob) for p in small])
    durable = seconds(lambda: [atomic.write_bytes(p, blob) for p in small])
    rows.append(("atomic.write_bytes 2 KiB, fsync off", len(small), plain, ""))
    ratio = f"{durable / plain:.1f}x"
    rows.append(("atomic.write_bytes 2 KiB, fsync file + folder", len(small), durable, ratio))
    return rows


def resume_rows(run, out: Path, files: list[Path]) -> list[tuple]:
    """A finished folder resumed: listing only, with the input check, every input touched."""
    from ptxseg.inference import pipeline

    with mock.patch("os.fsync"):  # the finished folder to resume
        run(out, files)
    with mock.patch.object(pipeline, "same_input", lambda path, recorded: True):
        listing = seconds(lambda: run(out, files))
    checked = seconds(lambda: run(out, files))
    for path in files:
        os.utime(path, ns=(1, 1))
    touched_result: list[pipeline.RunResult] = []
    touched = seconds(lambda: touched_result.append(run(out, files)))
    assert touched_result[0].skipped == len(files), "touched files were predicted again"
    hashing = seconds(lambda: [hashlib.sha256(p.read_bytes()).hexdigest() for p in files])
    n = len(files)
    return [
        ("resume, listing only (before)", n, listing, ""),
        ("resume, + stat per input", n, checked, f"{checked / listing:.2f}x"),
        ("resume, every input touched (hashed)", n, touched, f"{touched / listing:.2f}x"),
        ("sha256 of every input alone", n, hashing, ""),
    ]


def report(rows: list[tuple], originals: list[Path], files: list[Path], tmp: Path) -> str:
    """The Markdown page: title, machine, inputs, table and how to read it."""
    from ptxseg.benchmarks.common import environment_lines

    size = sum(p.stat().st_size for p in files) / len(files) / 1024
    lines = ["# predict: cost of fsync and of the rerun's input check", ""]
    lines += environment_lines()
    lines += [
        f"- inputs: {len(originals)} DICOMs ({'real SIIM' if REAL.is_dir() else 'synthetic'}"
        f", mean {size:.0f} KiB) copied to {len(files)} names; filesystem of {tmp.parent}",
        "",
        "| what | files | seconds | ms per file | vs. before |",
        "|---|---|---|---|---|",
    ]
    for what, n, spent, ratio in rows:
        lines.append(f"| {what} | {n} | {spent:.2f} | {1000 * spent / n:.2f} | {ratio} |")
    lines += [
        "",
        "predict rows: `predict --outputs mask,findings` (2 reader and 2 writer threads, a "
        "64 px model) of the first files into a new folder: 1024 px decoding and mask PNGs "
        "dominate. atomic rows: the write alone. Resume rows: the same predict call on a "
        "finished folder, every image skipped (its summary row and its submission RLE, "
        "from the mask PNG, are read back); before = the listing-only fast path, without "
        "the input check.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1200)
    parser.add_argument("--fsync-files", type=int, default=200)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "resume-2core.md")
    args = parser.parse_args()

    sys.path.insert(0, str(HERE.parent / "tests"))
    from predict_helpers import make_checkpoint

    from ptxseg.inference import pipeline
    from ptxseg.inference.predictor import Predictor

    tmp = Path(tempfile.mkdtemp(prefix="ptxseg-resume-", dir=os.environ.get("TMPDIR")))
    try:
        originals = sources(tmp)
        files = copies(originals, tmp / "in", args.files)
        predictor = Predictor(make_checkpoint(tmp / "m.ckpt", "resnet18", 64), batch_size=8)

        def run(out: Path, some: list[Path]) -> pipeline.RunResult:
            return pipeline.predict_files(
                predictor, some, out, outputs=("mask", "findings"), workers=2, progress=False
            )

        rows = write_rows(run, tmp, files[: args.fsync_files])
        rows += resume_rows(run, tmp / "done", files)
        text = report(rows, originals, files, tmp)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(text)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
