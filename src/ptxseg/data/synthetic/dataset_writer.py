"""The synthetic dataset of `ptxseg synth`: DICOM files, the stage-1 CSV, a panel, the folder.

`generate_dataset` writes the Kaggle stage-1 layout: JPEG Baseline DICOMs under
`dicom-images-train/<study>/<series>/<ImageId>.dcm` and `train-rle.csv` with relative, column-major
RLE, one row per connected pneumothorax region, the radiographs drawn by
`ptxseg.data.synthetic.radiograph`. Identifiers, patients, views and labels are planned first
(`plan_cases`), so each case is drawn from its own seed.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ptxseg.data.rle import rle_encode
from ptxseg.data.synthetic.radiograph import CaseSpec, render_case
from ptxseg.util import atomic, path_guard
from ptxseg.util.progress import progress_bar

IMAGES_DIR = "dicom-images-train"
CSV_NAME = "train-rle.csv"
METADATA_NAME = "metadata.csv"
CSV_HEADER = ("ImageId", " EncodedPixels")
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
UID_ROOT = "1.2.276.0.7230010.3.1"  # the root of the SIIM UIDs: .2 study, .3 series, .4 instance
UID_SITE = "8323329"
SIIM_SPACINGS_MM = (0.139, 0.143, 0.148, 0.168, 0.171, 0.194)  # at 1024 px, as in the real files
MIN_SIZE = 32
PROGRESS_MIN_IMAGES = 100
SECOND_IMAGE_RATE = 0.08  # share of images that are a patient's second radiograph


def parse_drains(text: str | None) -> tuple[float, float] | None:
    """`P_POS:P_NEG` (e.g. `0.7:0.05`): the share of positive and of negative images that get a
    chest drain; None for none."""
    if text is None or text == "":
        return None
    try:
        p_pos, p_neg = (float(x) for x in str(text).split(":"))
    except ValueError:
        raise ValueError(
            f"--drains {text!r}: expected P_POS:P_NEG, the shares of positive and negative "
            "images with a chest drain, e.g. 0.7:0.05"
        ) from None
    if not (0 <= p_pos <= 1 and 0 <= p_neg <= 1):
        raise ValueError(f"--drains {text!r}: both shares must lie between 0 and 1")
    return p_pos, p_neg


def plan_cases(
    n_images: int,
    seed: int = 0,
    positive_fraction: float = 0.3,
    drains: tuple[float, float] | None = None,
) -> list[CaseSpec]:
    """Draw identifiers, patients, views and labels for `n_images` radiographs (deterministic).

    `drains` (P_POS, P_NEG) gives that share of positive and of negative images a chest drain,
    drawn from a stream of its own: everything else is the same as without drains."""
    _check_arguments(n_images, MIN_SIZE, positive_fraction)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    n_positive = int(round(positive_fraction * n_images))
    positive = np.zeros(n_images, dtype=bool)
    positive[rng.permutation(n_images)[:n_positive]] = True
    numbers = np.sort(rng.choice(max(20000, 2 * n_images), n_images, replace=False) + 1)
    cases: list[CaseSpec] = []
    patient: tuple[str, str, int, int] | None = None
    patient_images = 0
    for i, number in enumerate(numbers.tolist()):
        if patient is None or patient_images >= 2 or rng.random() >= SECOND_IMAGE_RATE:
            sex = "M" if rng.random() < 0.55 else "F"
            age = int(np.clip(rng.normal(50, 17), 18, 89))
            patient = (str(uuid.UUID(bytes=rng.bytes(16), version=4)), sex, age, i)
            patient_images = 0
        else:
            age_step = int(rng.integers(0, 2))
            patient = (patient[0], patient[1], min(patient[2] + age_step, 90), patient[3])
        patient_images += 1
        stamp = 1517875160 + number // 150
        micro = int(rng.integers(100002, 999999))
        suffix = f"{UID_SITE}.{number}.{stamp}"
        cases.append(
            CaseSpec(
                image_id=f"{UID_ROOT}.4.{suffix}.{micro}",
                study_uid=f"{UID_ROOT}.2.{suffix}.{micro - 1}",
                series_uid=f"{UID_ROOT}.3.{suffix}.{micro - 2}",
                patient_id=patient[0],
                patient_sex=patient[1],
                patient_age=patient[2],
                view_position="PA" if rng.random() < 0.55 else "AP",
                spacing_1024=float(rng.choice(SIIM_SPACINGS_MM)),
                positive=bool(positive[i]),
                seed=int(rng.integers(2**63)),
                patient_seed=int(seed * 1_000_003 + patient[3]),
            )
        )
    if drains is not None:
        drain_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,)))
        draws = drain_rng.random(len(cases))
        cases = [
            replace(c, drain=bool(u < (drains[0] if c.positive else drains[1])))
            for c, u in zip(cases, draws, strict=True)
        ]
    return cases


def _check_arguments(n_images: int, size: int, positive_fraction: float) -> None:
    if int(n_images) != n_images or n_images < 1:
        raise ValueError(f"n_images must be a whole number >= 1, got {n_images!r}")
    if int(size) != size or size < MIN_SIZE:
        raise ValueError(
            f"size must be a whole number of pixels >= {MIN_SIZE}, got {size!r} "
            "(SIIM images are 1024; 256 or 512 are typical for training)"
        )
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be between 0 and 1, got {positive_fraction!r}")


# ---------------------------------------------------------------------------------------------
# Files: DICOM (JPEG Baseline, as in the SIIM download), the stage-1 CSV, and the whole dataset.


def pixel_spacing(spec: CaseSpec, size: int) -> float:
    """Pixel spacing in mm at `size`, so that the physical field of view is a real chest's."""
    return round(spec.spacing_1024 * 1024 / size, 6)


def dicom_bytes(spec: CaseSpec, image: np.ndarray, seed: int | None = None) -> bytes:
    """A DICOM Part 10 file with the SIIM header tags; pixels as encapsulated JPEG Baseline."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate

    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise RuntimeError(f"OpenCV could not JPEG-encode the image of {spec.image_id}")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    meta.MediaStorageSOPInstanceUID = spec.image_id
    meta.TransferSyntaxUID = JPEG_BASELINE
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = spec.image_id
    ds.StudyDate = "19010101"
    ds.StudyTime = "000000.00"
    ds.AccessionNumber = ""
    ds.Modality = "CR"
    ds.ConversionType = "WSD"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = f"view: {spec.view_position}"
    ds.PatientName = spec.patient_id
    ds.PatientID = spec.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = spec.patient_sex
    ds.PatientAge = f"{spec.patient_age:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = spec.view_position
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = spec.series_uid
    ds.StudyID = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    comment = "synthetic radiograph generated by ptxseg synth"
    ds.ImageComments = comment if seed is None else f"{comment} (seed {seed})"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = image.shape
    spacing = pixel_spacing(spec, image.shape[0])
    ds.PixelSpacing = [f"{spacing:.6g}", f"{spacing:.6g}"]
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.PixelData = encapsulate([jpeg.tobytes()])
    ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _csv_text(rows: list[tuple[str, str]]) -> str:
    """Stage-1 `train-rle.csv`: header `ImageId, EncodedPixels`, values with a leading space."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    writer.writerows((image_id, f" {rle}") for image_id, rle in rows)
    return buffer.getvalue()


def check_out_dir(out_dir: str | Path, overwrite: bool) -> list[Path]:
    """The dataset paths already in `out_dir` that a run would replace; FileExistsError when
    there are some and `overwrite` is off, or when `out_dir/made-by.json` does not say synth
    wrote them (a real dataset is never replaced)."""
    out_dir = Path(out_dir)
    existing = [p for p in (out_dir / IMAGES_DIR, out_dir / CSV_NAME) if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{existing[0]} already exists: choose another output folder or pass overwrite=True "
            "(--overwrite) to replace the synthetic dataset there"
        )
    made = path_guard.made_by(out_dir)
    if existing and (made is None or made.get("command") != "synth"):
        raise FileExistsError(
            f"{existing[0]} was not written by synth ({out_dir / path_guard.MADE_BY} does not say "
            "so): --overwrite replaces only synth's own datasets; choose another output folder, "
            "or move that one away yourself"
        )
    return existing


@dataclass(frozen=True)
class Appearance:
    """How the cases look: `conspicuity` of a pneumothorax (1 subtle, as on real films; 3 for
    quick CPU demos) and `drains` (P_POS, P_NEG), the share of positive and of negative images
    with a chest drain (None: none)."""

    conspicuity: float = 1.0
    drains: tuple[float, float] | None = None


def generate_dataset(
    out_dir: str | Path,
    n_images: int,
    size: int = 256,
    seed: int = 0,
    positive_fraction: float = 0.3,
    overwrite: bool = False,
    progress: bool | None = None,
    appearance: Appearance = Appearance(),
) -> dict[str, Any]:
    """Write `n_images` synthetic radiographs and their annotations in the SIIM stage-1 layout.

    `appearance.drains` (P_POS, P_NEG) draws a chest drain on that share of positive and
    negative images and records it per image in `metadata.csv` (ImageId, chest_drain), which
    `ptxseg evaluate --subgroups` reads.

    Everything is written under a temporary folder inside `out_dir` and moved into place at the
    end, so a failure leaves no half-written dataset; then `out_dir/made-by.json` marks it as
    synth's. An existing dataset in `out_dir` is only replaced with `overwrite=True`, and only
    when that mark says synth wrote it: a real dataset is never deleted. `progress` (default:
    when `n_images >= 100`) shows a bar.
    Returns a summary: counts of images, positives, regions and patients, and the paths written.
    """
    _check_arguments(n_images, size, positive_fraction)
    out_dir = Path(out_dir)
    drains = appearance.drains
    existing = check_out_dir(out_dir, overwrite)
    cases = plan_cases(n_images, seed, positive_fraction, drains)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / f".synth-{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    show = progress if progress is not None else n_images >= PROGRESS_MIN_IMAGES
    try:
        n_regions = _write_cases(staging, cases, (size, seed, appearance.conspicuity), show)
        if drains is not None:
            metadata = "ImageId,chest_drain\n" + "".join(
                f"{c.image_id},{int(c.drain)}\n" for c in cases
            )
            atomic.write_bytes(staging / METADATA_NAME, metadata.encode())
        _publish(staging, out_dir, existing, with_metadata=drains is not None)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    details = {"n_images": n_images, "size": size, "seed": seed}
    details.update(positive_fraction=positive_fraction, conspicuity=appearance.conspicuity)
    path_guard.mark(out_dir, "synth", "data", **details)
    n_positive = sum(spec.positive for spec in cases)
    return {
        "out_dir": str(out_dir),
        "images_dir": str(out_dir / IMAGES_DIR),
        "csv": str(out_dir / CSV_NAME),
        "n_images": n_images,
        "n_positive": n_positive,
        "n_negative": n_images - n_positive,
        "n_regions": n_regions,
        "n_patients": len({spec.patient_id for spec in cases}),
        "n_drains": sum(spec.drain for spec in cases),
        "metadata": str(out_dir / METADATA_NAME) if drains is not None else None,
        "size": size,
        "seed": seed,
    }


def _write_cases(staging: Path, cases: list[CaseSpec], drawing: tuple, show: bool) -> int:
    """Draw every case into `staging` as a DICOM and write the CSV; the number of regions.

    `drawing`: (image side, the dataset's seed, conspicuity)."""
    size, seed, conspicuity = drawing
    rows: list[tuple[str, str]] = []
    n_regions = 0
    with progress_bar(show) as bar:
        task = bar.add_task(f"synthetic {size}px radiographs", total=len(cases))
        for spec in cases:
            image, regions = render_case(spec, size, conspicuity)
            path = staging / IMAGES_DIR / spec.study_uid / spec.series_uid
            atomic.write_bytes(path / f"{spec.image_id}.dcm", dicom_bytes(spec, image, seed))
            rows.extend((spec.image_id, rle_encode(r, "relative")) for r in regions)
            if not regions:
                rows.append((spec.image_id, "-1"))
            n_regions += len(regions)
            bar.advance(task)
    atomic.write_bytes(staging / CSV_NAME, _csv_text(rows).encode())
    return n_regions


def _publish(staging: Path, out_dir: Path, existing: list[Path], with_metadata: bool) -> None:
    """Replace the `existing` dataset paths by the staged ones, durably."""
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    if existing:  # the replaced dataset's drains do not describe the new images
        (out_dir / METADATA_NAME).unlink(missing_ok=True)
    atomic.sync_tree(staging)
    os.replace(staging / IMAGES_DIR, out_dir / IMAGES_DIR)
    os.replace(staging / CSV_NAME, out_dir / CSV_NAME)
    if with_metadata:
        os.replace(staging / METADATA_NAME, out_dir / METADATA_NAME)
    atomic.sync_folder(out_dir)


# ---------------------------------------------------------------------------------------------
# A figure that reads the written files back: a visual check of images, masks and the CSV.


def plot_samples(out_dir: str | Path, png_path: str | Path, n: int = 6) -> Path:
    """Plot `n` written radiographs (positives first) with and without their mask overlay."""
    from ptxseg.util.plotting import pyplot

    plt = pyplot()
    import pydicom

    from ptxseg.data.rle import read_annotations, rles_to_mask

    out_dir, png_path = Path(out_dir), Path(png_path)
    annotations = read_annotations(out_dir / CSV_NAME)
    paths = {p.stem: p for p in (out_dir / IMAGES_DIR).glob("*/*/*.dcm")}
    missing = sorted(set(annotations) - set(paths))
    if missing:
        raise FileNotFoundError(f"{out_dir / IMAGES_DIR} has no DICOM for ImageId {missing[0]}")
    positives = [i for i in annotations if annotations[i]]
    negatives = [i for i in annotations if not annotations[i]]
    n_pos = min(len(positives), max(n - max(1, n // 3), n - len(negatives)))
    chosen = positives[:n_pos] + negatives[: n - n_pos]
    fig, axes = plt.subplots(2, len(chosen), figsize=(2.4 * len(chosen), 5.2), squeeze=False)
    for col, image_id in enumerate(chosen):
        ds = pydicom.dcmread(paths[image_id])
        image = ds.pixel_array
        mask = rles_to_mask(annotations[image_id], *image.shape)
        axes[0, col].imshow(image, cmap="gray", vmin=0, vmax=255)
        k = len(annotations[image_id])
        finding = f"{k} pneumothorax region{'s' if k > 1 else ''}" if k else "no pneumothorax"
        axes[0, col].set_title(f"{ds.ViewPosition}, {finding}", fontsize=8)
        axes[1, col].imshow(image, cmap="gray", vmin=0, vmax=255)
        overlay = np.zeros((*mask.shape, 4), np.float32)
        overlay[mask] = (1.0, 0.15, 0.1, 0.55)
        axes[1, col].imshow(overlay)
        for ax in axes[:, col]:
            ax.set_axis_off()
    axes[0, 0].text(
        -0.08, 0.5, "image", transform=axes[0, 0].transAxes, rotation=90, va="center", ha="right"
    )
    axes[1, 0].text(
        -0.08, 0.5, "mask", transform=axes[1, 0].transAxes, rotation=90, va="center", ha="right"
    )
    fig.tight_layout()
    return atomic.save_figure(fig, png_path, dpi=80)
