"""Read chest X-rays (DICOM, PNG, JPEG) into float32 images in [0, 1] plus their metadata.

The SIIM files are 8-bit JPEG Baseline DICOMs; those are decoded with OpenCV's libjpeg-turbo,
several times faster than pydicom's plugins and within one gray level of them. Everything else
(12-16 bit, rescale, VOI LUT or windowing, MONOCHROME1, JPEG Lossless / 2000) goes through pydicom.
Invalid header values that occur in the real data (SOPInstanceUID `ID_...`, empty IDs, age `152`)
are read with a `DicomHeaderWarning`; unreadable files raise `ImageReadError` naming the file.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np
import pydicom
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm", ".dicom")
MAX_PLAUSIBLE_AGE = 120

Source = str | Path | bytes


class ImageReadError(ValueError):
    """A file that cannot be read as a chest X-ray; the message names the file and the reason."""


class DicomHeaderWarning(UserWarning):
    """A DICOM header value is invalid but the image was read anyway."""


def _name(source: Source, name: str | None) -> str:
    if name:
        return name
    return "<uploaded bytes>" if isinstance(source, bytes) else str(source)


def is_dicom_bytes(head: bytes) -> bool:
    """True when the bytes start like a DICOM Part 10 file (128-byte preamble, then `DICM`)."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def read_dicom(source: Source, name: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a DICOM file (path or bytes) into a float32 (H, W) image in [0, 1] and its metadata."""
    image, _, meta = _read_dicom(source, name, keep_frame=False)
    return image, meta


def read_dicom_frame(
    source: Source, name: str | None = None
) -> tuple[np.ndarray | None, bytes | None, dict[str, Any]]:
    """(image, frame, metadata): the JPEG Baseline frame left compressed where it can be.

    For the files that `read_dicom` decodes with libjpeg-turbo (8-bit JPEG Baseline, one sample,
    no rescale or VOI LUT) this returns `(None, frame, meta)` so that another decoder (nvJPEG on a
    GPU, see `ptxseg.data.device_images`) can decode it; `meta["Invert"]` then says whether the
    decoded pixels must be turned over (MONOCHROME1). Every other file comes back decoded as
    `(image, None, meta)`, exactly as `read_dicom` reads it.
    """
    return _read_dicom(source, name, keep_frame=True)


def _read_dicom(
    source: Source, name: str | None, keep_frame: bool
) -> tuple[np.ndarray | None, bytes | None, dict[str, Any]]:
    label = _name(source, name)
    fp: str | BinaryIO = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(fp)
        except FileNotFoundError:
            raise ImageReadError(f"{label}: file not found") from None
        except (InvalidDicomError, EOFError, OSError, ValueError, KeyError) as err:
            raise ImageReadError(
                f"{label} is not a readable DICOM file ({err}); "
                "expected a DICOM Part 10 chest X-ray"
            ) from None
        if "PixelData" not in ds:
            raise ImageReadError(
                f"{label} has no pixel data (SOP class {ds.get('SOPClassUID', 'unknown')}): "
                "expected a DICOM image such as a CR or DX chest radiograph"
            )
        meta = _metadata(ds, label)
        frame = _baseline_frame(ds) if keep_frame else None
        try:
            image = None if frame is not None else _pixels(ds)
        except Exception as err:  # decoders raise many types; the user needs the file name
            raise ImageReadError(
                f"{label}: cannot decode the pixel data ({meta['TransferSyntaxUID']}): {err}. "
                "The file may be corrupt, or need a decoder plugin "
                "(pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg)"
            ) from None
    problems = meta["HeaderWarnings"] + [
        str(w.message).split(". Please see")[0]
        for w in caught
        if issubclass(w.category, UserWarning)
    ]
    meta["HeaderWarnings"] = list(dict.fromkeys(problems))
    if meta["HeaderWarnings"]:
        warnings.warn(
            f"{label}: read despite invalid header values: {'; '.join(meta['HeaderWarnings'])}",
            DicomHeaderWarning,
            stacklevel=3,
        )
    if frame is not None:
        meta["Invert"] = str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1"
    return image, frame, meta


def _is_plain_baseline(ds: pydicom.Dataset) -> bool:
    """8-bit one-sample JPEG Baseline without rescale or VOI LUT: any JPEG decoder reads it."""
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    bits = int(ds.get("BitsStored", 8))
    plain = not any(k in ds for k in ("RescaleSlope", "VOILUTSequence", "WindowCenter"))
    return (
        syntax == JPEG_BASELINE and bits == 8 and int(ds.get("SamplesPerPixel", 1)) == 1 and plain
    )


def _baseline_frame(ds: pydicom.Dataset) -> bytes | None:
    """The first compressed frame of a plain JPEG Baseline file, else None."""
    if not _is_plain_baseline(ds):
        return None
    try:
        return next(generate_frames(ds.PixelData, number_of_frames=1))
    except Exception:  # noqa: BLE001 - a damaged encapsulation: let the full reader report it
        return None


def _pixels(ds: pydicom.Dataset) -> np.ndarray:
    bits = int(ds.get("BitsStored", 8))
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if _is_plain_baseline(ds):
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        decoded = cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_GRAYSCALE)
        if decoded is not None and decoded.shape == (ds.Rows, ds.Columns):
            return pixels_of_frame(decoded, photometric == "MONOCHROME1")
    return _pixels_general(ds, bits, photometric)


def pixels_of_frame(decoded: np.ndarray, invert: bool) -> np.ndarray:
    """The float32 [0, 1] image of a decoded 8-bit frame (turned over for MONOCHROME1)."""
    if invert:
        decoded = 255 - decoded
    return np.multiply(decoded, np.float32(1 / 255), dtype=np.float32)


def _pixels_general(ds: pydicom.Dataset, bits: int, photometric: str) -> np.ndarray:
    arr = ds.pixel_array
    if arr.ndim == 3 and photometric.startswith("MONOCHROME"):
        arr = arr[0]  # multi-frame: the first frame
    elif arr.ndim == 3:
        arr = cv2.cvtColor(arr.astype(np.uint8), cv2.COLOR_RGB2GRAY)
    values = apply_modality_lut(arr, ds).astype(np.float32)
    has_voi = "VOILUTSequence" in ds or "WindowCenter" in ds
    if has_voi:
        values = apply_voi_lut(values, ds).astype(np.float32)
    if not has_voi and "RescaleSlope" not in ds and int(ds.get("PixelRepresentation", 0)) == 0:
        low, high = 0.0, float(2**bits - 1)
    else:
        low, high = float(values.min()), float(values.max())
    image = (values - low) / max(high - low, 1e-6)
    image = np.clip(image, 0.0, 1.0, out=image)
    # MONOCHROME1 is inverted after the modality and VOI transforms, as the standard specifies.
    return 1.0 - image if photometric == "MONOCHROME1" else image


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def parse_age(text: str) -> int | None:
    """Years from a PatientAge such as `062Y` or the SIIM files' bare `62`; None if implausible."""
    match = re.fullmatch(r"0*(\d{1,3})Y?", text.strip())
    if not match or int(match.group(1)) > MAX_PLAUSIBLE_AGE:
        return None
    return int(match.group(1))


def _metadata(ds: pydicom.Dataset, label: str) -> dict[str, Any]:
    problems: list[str] = []
    sop_uid = _text(ds, "SOPInstanceUID")
    if sop_uid and not re.fullmatch(r"[0-9]+(\.[0-9]+)*", sop_uid):
        problems.append(f"SOPInstanceUID {sop_uid!r} is not a valid UID")
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "PatientID"):
        if not _text(ds, key):
            problems.append(f"{key} is empty")
    age_text = _text(ds, "PatientAge")
    age = parse_age(age_text)
    if age is None and age_text:
        problems.append(f"PatientAge {age_text!r} is not a plausible age in years; ignored")
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    path_stem = Path(label).stem if not label.startswith("<") else ""
    return {
        "ImageId": path_stem or sop_uid,
        "path": label,
        "source": "dicom",
        "Rows": int(ds.get("Rows", 0)),
        "Columns": int(ds.get("Columns", 0)),
        "PixelSpacing": [float(s) for s in spacing] if spacing else None,
        "ViewPosition": _text(ds, "ViewPosition") or None,
        "PatientSex": _text(ds, "PatientSex") or None,
        "PatientAge": age,
        "PatientID": _text(ds, "PatientID") or None,
        "StudyInstanceUID": _text(ds, "StudyInstanceUID") or None,
        "SeriesInstanceUID": _text(ds, "SeriesInstanceUID") or None,
        "SOPInstanceUID": sop_uid or None,
        "Modality": _text(ds, "Modality") or None,
        "PhotometricInterpretation": _text(ds, "PhotometricInterpretation") or None,
        "BitsStored": int(ds.get("BitsStored", 0)) or None,
        "TransferSyntaxUID": str(ds.file_meta.get("TransferSyntaxUID", "")) or None,
        "HeaderWarnings": problems,
    }


def _read_raster(data: bytes, label: str) -> tuple[np.ndarray, dict[str, Any]]:
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ImageReadError(
            f"{label} is not a readable image: expected a DICOM, PNG or JPEG chest X-ray"
        )
    if array.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if array.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        array = cv2.cvtColor(array, code)
    scale = 65535.0 if array.dtype == np.uint16 else 255.0
    image = array.astype(np.float32) / np.float32(scale)
    stem = Path(label).stem if not label.startswith("<") else ""
    meta = {
        "ImageId": stem,
        "path": label,
        "source": "image",
        "Rows": int(image.shape[0]),
        "Columns": int(image.shape[1]),
        "PixelSpacing": None,
        "ViewPosition": None,
        "HeaderWarnings": [],
    }
    return image, meta


def read_image(source: Source, name: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a DICOM, PNG or JPEG (path or bytes) into a float32 (H, W) image in [0, 1]."""
    label = _name(source, name)
    if isinstance(source, bytes):
        data = source
    else:
        try:
            data = Path(source).read_bytes()
        except FileNotFoundError:
            raise ImageReadError(f"{label}: file not found") from None
        except IsADirectoryError:
            raise ImageReadError(f"{label} is a folder, expected an image file") from None
    suffix = Path(label).suffix.lower()
    if is_dicom_bytes(data[:132]) or suffix in DICOM_SUFFIXES:
        return read_dicom(data, name=label)
    return _read_raster(data, label)
