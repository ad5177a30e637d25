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
import time
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


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1200)
    parser.add_argument("--fsync-files", type=int, default=200)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "resume-2core.md")
    args = parser.parse_args()

    sys.path.insert(0, str(HERE.parent / "tests"))
    from predict_helpers import make_checkpoint

    from ptxseg.benchmarks.common import environment_lines
    from ptxseg.inference import pipeline
    from ptxseg.inference.predictor import Predictor
    from ptxseg.util import atomic

    tmp = Path(tempfile.mkdtemp(prefix="ptxseg-resume-", dir=os.environ.get("TMPDIR")))
    try:
        originals = sources(tmp)
        files = copies(originals, tmp / "in", args.files)
        predictor = Predictor(make_checkpoint(tmp / "m.ckpt", "resnet18", 64), batch_size=8)

        def run(out: Path, some: list[Path]) -> pipeline.RunResult:
            return pipeline.predict_files(
                predictor, some, out, outputs=("mask", "findings"), workers=2, progress=False
            )

        rows = []
        few = files[: args.fsync_files]
        with mock.patch("os.fsync"):
            no_sync = timed(lambda: run(tmp / "w-nosync", few))
        synced = timed(lambda: run(tmp / "w-sync", few))
        rows.append(("predict, fsync off", len(few), no_sync, ""))
        rows.append(("predict, fsync file + folder", len(few), synced, f"{synced / no_sync:.2f}x"))
        blob = os.urandom(2048)  # about a findings JSON
        small = [tmp / "atomic" / f"{i}.json" for i in range(args.fsync_files)]
        small[0].parent.mkdir()
        with mock.patch("os.fsync"):
            plain = timed(lambda: [atomic.write_bytes(p, blob) for p in small])
        durable = timed(lambda: [atomic.write_bytes(p, blob) for p in small])
        rows.append(("atomic.write_bytes 2 KiB, fsync off", len(small), plain, ""))
        rows.append(
            (
                "atomic.write_bytes 2 KiB, fsync file + folder",
                len(small),
                durable,
                f"{durable / plain:.1f}x",
            )
        )

        out = tmp / "done"
        with mock.patch("os.fsync"):  # the finished folder to resume
            run(out, files)
        with mock.patch.object(pipeline, "same_input", lambda path, recorded: True):
            listing = timed(lambda: run(out, files))
        checked = timed(lambda: run(out, files))
        for path in files:
            os.utime(path, ns=(1, 1))
        touched_result: list[pipeline.RunResult] = []
        touched = timed(lambda: touched_result.append(run(out, files)))
        assert touched_result[0].skipped == len(files), "touched files were predicted again"
        hashing = timed(
            lambda: [hashlib.sha256(p.read_bytes()).hexdigest() for p in files]  # noqa: B023
        )
        rows.append(("resume, listing only (before)", len(files), listing, ""))
        rows.append(("resume, + stat per input", len(files), checked, f"{checked / listing:.2f}x"))
        rows.append(
            (
                "resume, every input touched (hashed)",
                len(files),
                touched,
                f"{touched / listing:.2f}x",
            )
        )
        rows.append(("sha256 of every input alone", len(files), hashing, ""))
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
        for what, n, seconds, ratio in rows:
            lines.append(f"| {what} | {n} | {seconds:.2f} | {1000 * seconds / n:.2f} | {ratio} |")
        lines += [
            "",
            "predict rows: `predict --outputs mask,findings` (2 reader and 2 writer threads, a "
            "64 px model) of the first files into a new folder: 1024 px decoding and mask PNGs "
            "dominate. atomic rows: the write alone. Resume rows: the same predict call on a "
            "finished folder, every image skipped (its summary row and its submission RLE, "
            "from the mask PNG, are read back); before = the listing-only fast path, without "
            "the input check.",
        ]
        text = "\n".join(lines) + "\n"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(text)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
