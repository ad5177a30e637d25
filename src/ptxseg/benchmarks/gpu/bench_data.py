"""The data of `benchmark-gpu`: synthetic SIIM-style DICOMs repeated to the number of images
asked for (links, not copies), real DICOMs for predict when given, and the prepared folder."""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from ptxseg.benchmarks.gpu.bench import Bench, BenchData


def make_data(bench: Bench) -> BenchData:
    """Synthetic SIIM-style DICOMs, repeated to `images` files (links, not copies)."""
    from ptxseg.data.synthetic import Appearance, generate_dataset

    s = bench.s
    root = s.work / "synth"
    if not (root / "train-rle.csv").is_file():
        generate_dataset(
            root,
            s.distinct,
            s.source_size,
            seed=0,
            positive_fraction=0.5,
            appearance=Appearance(conspicuity=3.0),
        )
    dicoms, annotations = s.work / "dicoms", s.work / "dicoms.csv"
    if not annotations.is_file():
        originals = sorted((root / "dicom-images-train").rglob("*.dcm"))
        _repeat(originals, dicoms, s.images)
        _write_annotations(_read_rows(root / "train-rle.csv"), dicoms, annotations)
    predict_inputs, source = dicoms, f"{s.images} synthetic DICOMs ({s.distinct} distinct)"
    if s.dicoms is not None:
        real = sorted(p for p in Path(s.dicoms).rglob("*") if p.suffix.lower() == ".dcm")
        if not real:
            raise FileNotFoundError(f"no .dcm files in {s.dicoms}")
        predict_inputs = s.work / "real"
        if not predict_inputs.is_dir():
            _repeat(real, predict_inputs, s.images)
        source = f"{s.images} real DICOMs ({len(real)} distinct, from {s.dicoms})"
    return BenchData(dicoms, annotations, predict_inputs, source, s.work / f"prepared-{s.size}")


def _read_rows(path: Path) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            keys = {k.strip(): v.strip() for k, v in row.items()}
            rows.setdefault(keys["ImageId"], []).append(keys["EncodedPixels"])
    return rows


def _write_annotations(rows: dict[str, list[str]], dicoms: Path, annotations: Path) -> None:
    """The annotations of the copies: each copy `<stem>-r<k>` has its original's rows."""
    with open(annotations, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ImageId", "EncodedPixels"])
        for copy in sorted(dicoms.glob("*.dcm")):
            for rle in rows[copy.stem.rsplit("-r", 1)[0]]:
                writer.writerow([copy.stem, rle])


def _repeat(files: Sequence[Path], folder: Path, count: int) -> None:
    """`count` files in `folder` named `<stem>-r<k>.dcm`, hard links where the disk allows."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for k in range(count):
        source = files[k % len(files)]
        target = tmp / f"{source.stem}-r{k // len(files)}.dcm"
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
    os.replace(tmp, folder)


def prepare_command(data: BenchData, out: Path, bench: Bench, device: str) -> list[str]:
    """The `ptxseg prepare` arguments that cache the benchmark's DICOMs in `out` on `device`."""
    s = bench.s
    return [
        "prepare",
        "--images",
        data.dicoms,
        "--annotations",
        data.annotations,
        "--out",
        out,
        "--size",
        s.size,
        "--workers",
        s.workers,
        "--decode",
        {"cpu": "cpu", "auto": "auto"}.get(device, "device"),
    ]


def ensure_prepared(bench: Bench, data: BenchData) -> Path:
    """The prepared work folder (written on the GPU when there is one)."""
    if not (data.work / "manifest.csv").is_file():
        device = "cuda" if bench.gpu else "cpu"
        bench.ptxseg("prepare-work", *prepare_command(data, data.work, bench, device))
    return data.work
