"""Read chest X-rays (DICOM, PNG, JPEG) into float32 images in [0, 1] plus their metadata.

The SIIM files are 8-bit JPEG Baseline DICOMs; those are decoded with OpenCV's libjpeg-turbo,
several times faster than pydicom's plugins and within one gray level of them. Everything else
(12-16 bit, rescale, VOI LUT or windowing, MONOCHROME1, JPEG Lossless / 2000) goes through pydicom.

Every reader checks the pixel count that the header claims (DICOM Rows x Columns and the size in
an encapsulated frame, PNG and JPEG headers) against `max_pixels` before any decoding, so a tiny
file that claims 30000 x 30000 pixels is refused in microseconds (`ImageTooLargeError`).

Pixels are checked, not trusted. Every reader (predict, serve, listen, dicomweb and prepare read
through here) refuses an image smaller than `MIN_SIDE` pixels on a side (`ImageTooSmallError`), a
RescaleSlope of zero or one that is not a finite number, and an image whose pixels all have one
value after scaling: a model would otherwise find a pneumothorax in a blank picture. Colour is
converted to gray at its own bit depth (16-bit RGB included); a PNG's or JPEG's EXIF orientation is
applied, so the image is analysed upright; an empty file is called empty.

Invalid header values that occur in the real data (SOPInstanceUID `ID_...`, empty IDs, age `152`,
a PixelSpacing that is not a number) are collected per image into `metadata["HeaderWarnings"]`
and announced with one `DicomHeaderWarning`; the values are read from the dataset itself, never
captured from the process-wide warnings machinery, so threads never see each other's warnings.
Unreadable files raise `ImageReadError` naming the file.
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
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.tag import Tag
from pydicom.uid import UID

from ptxseg.data.codestream import PNG_SIGNATURE, png_chunks_fit, stream_size

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm", ".dicom")
MAX_PLAUSIBLE_AGE = 120
# The largest radiography detectors give about 4300 x 4300 = 18.5 MP; 60 MP leaves room for
# stitched long-length images and refuses what would take gigabytes to decode.
DEFAULT_MAX_PIXELS = 60_000_000
# The smallest side any reader accepts: a 1x1 or 3x65535 "image" is no radiograph, and the
# findings (sizes in mm, sides) computed on one would be nonsense.
MIN_SIDE = 32
VALID_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
PIXEL_DATA = Tag("PixelData")

Source = str | Path | bytes


class ImageReadError(ValueError):
    """A file that cannot be read as a chest X-ray; the message names the file and the reason."""


class ImageTooLargeError(ImageReadError):
    """The header claims more pixels than the reader's limit; nothing was decoded."""

    def __init__(self, message: str, height: int, width: int, limit: int):
        super().__init__(message)
        self.height, self.width, self.limit = height, width, limit


class ImageTooSmallError(ImageReadError):
    """The image is smaller than `MIN_SIDE` pixels on a side."""

    def __init__(self, message: str, height: int, width: int):
        super().__init__(message)
        self.height, self.width = height, width


class DicomHeaderWarning(UserWarning):
    """A DICOM header value is invalid but the image was read anyway."""


def _name(source: Source, name: str | None) -> str:
    if name:
        return name
    return "<uploaded bytes>" if isinstance(source, bytes) else str(source)


def megapixels(n: int) -> str:
    return f"{n / 1e6:.3g} MP"


def check_pixel_count(label: str, height: int, width: int, max_pixels: int, where: str) -> None:
    """Raise ImageTooLargeError when `where` (a header) claims more than `max_pixels` pixels."""
    if height * width > max_pixels:
        raise ImageTooLargeError(
            f"{label}: {where} claims {height}x{width} pixels ({megapixels(height * width)}), "
            f"more than the limit of {megapixels(max_pixels)}; nothing was decoded. A chest "
            "X-ray has at most about 20 MP: check the file, or raise the limit (--max-megapixels)",
            height,
            width,
            max_pixels,
        )


def check_min_size(label: str, height: int, width: int, where: str) -> None:
    """Raise ImageTooSmallError when an image is under MIN_SIDE pixels on a side."""
    if min(height, width) < MIN_SIDE:
        raise ImageTooSmallError(
            f"{label}: {where} gives {height}x{width} pixels, smaller than the least that is "
            f"read ({MIN_SIDE}x{MIN_SIDE}): expected a chest X-ray; check that this is the image "
            "and not an icon, a thumbnail or a damaged header",
            height,
            width,
        )


def _empty(label: str) -> ImageReadError:
    return ImageReadError(
        f"{label}: empty file (0 bytes); expected a chest X-ray. The copy or download that made "
        "it may have failed: copy the file again"
    )


def _is_empty(source: Source) -> bool:
    if isinstance(source, bytes):
        return not source
    try:
        return Path(source).stat().st_size == 0
    except OSError:
        return False


def is_dicom_bytes(head: bytes) -> bool:
    """True when the bytes start like a DICOM Part 10 file (128-byte preamble, then `DICM`)."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def read_dicom(
    source: Source, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a DICOM file (path or bytes) into a float32 (H, W) image in [0, 1] and its metadata."""
    image, _, meta = _read_dicom(source, name, max_pixels, keep_frame=False)
    return image, meta


def read_dicom_frame(
    source: Source, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray | None, bytes | None, dict[str, Any]]:
    """(image, frame, metadata): the JPEG Baseline frame left compressed where it can be.

    For the files that `read_dicom` decodes with libjpeg-turbo (8-bit JPEG Baseline, one sample,
    no rescale or VOI LUT) this returns `(None, frame, meta)` so that another decoder (nvJPEG on a
    GPU, see `ptxseg.data.device_images`) can decode it; `meta["Invert"]` then says whether the
    decoded pixels must be turned over (MONOCHROME1). Every other file comes back decoded as
    `(image, None, meta)`, exactly as `read_dicom` reads it. The same checks apply to both.
    """
    return _read_dicom(source, name, max_pixels, keep_frame=True)


def _read_dicom(
    source: Source, name: str | None, max_pixels: int, keep_frame: bool
) -> tuple[np.ndarray | None, bytes | None, dict[str, Any]]:
    label = _name(source, name)
    fp: str | BinaryIO = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    try:  # pydicom parses elements when they are first used: damage shows up anywhere here
        ds = pydicom.dcmread(fp)
        if PIXEL_DATA not in ds:
            raise ImageReadError(
                f"{label} has no pixel data (SOP class {_text(ds, 'SOPClassUID') or 'unknown'}): "
                "expected a DICOM image such as a CR or DX chest radiograph; a truncated file "
                "also ends before its pixel data"
            )
        meta = read_header(ds, label)
        syntax = meta["TransferSyntaxUID"] or ""
        check_pixel_count(label, meta["Rows"], meta["Columns"], max_pixels, "the header")
        frame = _first_frame(ds, label) if _is_encapsulated(syntax) else None
        plain = frame is not None and _is_plain_baseline(ds, meta)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(f"{label}: file not found") from None
    except Exception as err:  # the parser raises many types on damaged files
        if _is_empty(source):
            raise _empty(label) from None
        raise ImageReadError(
            f"{label} is not a readable DICOM file ({_reason(err)}); "
            "expected a DICOM Part 10 chest X-ray"
        ) from None
    if frame is not None:
        _check_frame(frame, meta, label, max_pixels)
    image = None
    if keep_frame and plain:
        meta["Invert"] = meta["PhotometricInterpretation"] == "MONOCHROME1"
    else:
        try:
            image = _pixels(ds, frame if plain else None, meta)
        except ImageReadError as err:
            raise ImageReadError(f"{label}: {err}") from None
        except Exception as err:  # decoders raise many types; the user needs the file name
            raise ImageReadError(
                f"{label}: cannot decode the pixel data ({syntax}): {_reason(err)}. "
                "The file may be corrupt, or need a decoder plugin "
                "(pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg)"
            ) from None
        frame = None
    if meta["HeaderWarnings"]:
        warnings.warn(
            f"{label}: read despite invalid header values: {'; '.join(meta['HeaderWarnings'])}",
            DicomHeaderWarning,
            stacklevel=3,
        )
    return image, frame, meta


def _reason(err: BaseException) -> str:
    """A decoder's own message when it is meant for people, else a plain description."""
    text = str(err).split("\n")[0].strip()
    if isinstance(err, ValueError | RuntimeError | NotImplementedError | OSError | EOFError) and (
        text and "not supported between" not in text and "object has no attribute" not in text
    ):
        return text[:300]
    return "the header and the pixel data do not agree"


def _is_encapsulated(syntax: str) -> bool:
    try:
        return bool(syntax) and UID(syntax).is_encapsulated
    except ValueError:  # not a known transfer syntax: pydicom decides when decoding
        return False


def _first_frame(ds: pydicom.Dataset, label: str) -> bytes:
    try:
        return next(generate_frames(ds.PixelData, number_of_frames=1))
    except Exception as err:
        raise ImageReadError(
            f"{label}: the compressed pixel data cannot be split into frames ({_reason(err)}); "
            "the file may be truncated or corrupt"
        ) from None


def _check_frame(frame: bytes, meta: dict[str, Any], label: str, max_pixels: int) -> None:
    """The first compressed frame's own size: within the limit and equal to the header's."""
    size = stream_size(frame)
    if size is None:
        return  # RLE Lossless and others carry no size of their own: Rows x Columns rule
    check_pixel_count(label, *size, max_pixels, "the compressed frame")
    if size != (meta["Rows"], meta["Columns"]):
        raise ImageReadError(
            f"{label}: the compressed frame is {size[0]}x{size[1]} pixels but the header says "
            f"{meta['Rows']}x{meta['Columns']}: the file is inconsistent; re-export it"
        )


def _is_plain_baseline(ds: pydicom.Dataset, meta: dict[str, Any]) -> bool:
    """8-bit one-sample JPEG Baseline without rescale or VOI LUT: any JPEG decoder reads it."""
    plain = not any(k in ds for k in ("RescaleSlope", "VOILUTSequence", "WindowCenter"))
    return (
        meta["TransferSyntaxUID"] == JPEG_BASELINE
        and int(ds.get("BitsStored", 8)) == 8
        and int(ds.get("SamplesPerPixel", 1)) == 1
        and plain
    )


def pixels_of_frame(decoded: np.ndarray, invert: bool) -> np.ndarray:
    """The float32 [0, 1] image of a decoded 8-bit frame (turned over for MONOCHROME1)."""
    if invert:
        decoded = 255 - decoded
    return np.multiply(decoded, np.float32(1 / 255), dtype=np.float32)


def check_not_constant(image: np.ndarray) -> None:
    """Raise ImageReadError (without a file name) when every pixel has one value."""
    low, high = float(image.min()), float(image.max())
    if low == high:
        raise ImageReadError(
            f"all {image.size:,} pixels have the same value ({low:.3g} of 0..1) after scaling: "
            "there is no image to analyse; check the file, and its RescaleSlope and window"
        )


def _pixels(ds: pydicom.Dataset, frame: bytes | None, meta: dict[str, Any]) -> np.ndarray:
    """The image; `frame` (a plain JPEG Baseline frame) goes through libjpeg-turbo."""
    photometric = meta["PhotometricInterpretation"] or "MONOCHROME2"
    image = None
    if frame is not None:
        decoded = cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_GRAYSCALE)
        if decoded is not None and decoded.shape == (meta["Rows"], meta["Columns"]):
            image = pixels_of_frame(decoded, photometric == "MONOCHROME1")
    if image is None:
        image = _pixels_general(ds, int(ds.get("BitsStored", 8)), photometric)
    check_not_constant(image)
    return image


def _colour_to_gray(arr: np.ndarray, bits: int) -> np.ndarray:
    """RGB(A) samples of `bits` bits -> float32 gray in [0, 1], at their own depth.

    OpenCV's weights (ITU-R BT.601) for 8 and 16-bit samples, as PNG inputs are read; the scale is
    the samples' own bit depth, so 16-bit colour is not wrapped modulo 256."""
    if arr.dtype.kind != "u":
        raise ImageReadError(
            f"colour pixels are signed ({arr.dtype}); a colour DICOM image stores unsigned "
            "samples: re-export it as MONOCHROME2"
        )
    rgb = arr[..., :3]
    if rgb.dtype in (np.uint8, np.uint16):
        gray = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY).astype(np.float32)
    else:
        gray = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    scale = float(2 ** min(max(bits, 1), 8 * arr.dtype.itemsize) - 1)
    return np.clip(gray / np.float32(scale), 0.0, 1.0)


def _pixels_general(ds: pydicom.Dataset, bits: int, photometric: str) -> np.ndarray:
    if photometric == "PALETTE COLOR":
        raise ImageReadError(
            "PALETTE COLOR images are not radiographs: expected a MONOCHROME1 or MONOCHROME2 chest "
            "X-ray; re-export the image in grayscale"
        )
    ds.pixel_array_options(index=0)  # multi-frame: decode the first frame only
    arr = ds.pixel_array
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and not photometric.startswith("MONOCHROME"):
        return _colour_to_gray(arr, bits or 8 * arr.dtype.itemsize)
    if arr.ndim != 2:
        raise ValueError(f"expected one grayscale frame, got pixel data of shape {arr.shape}")
    values = apply_modality_lut(arr, ds).astype(np.float32)
    has_voi = "VOILUTSequence" in ds or "WindowCenter" in ds
    if has_voi:
        values = apply_voi_lut(values, ds).astype(np.float32)
    if not has_voi and "RescaleSlope" not in ds and int(ds.get("PixelRepresentation", 0)) == 0:
        low, high = 0.0, float(2**bits - 1)
    else:
        low, high = float(values.min()), float(values.max())
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(
            "the header's rescale or window values turn the pixels into values that are not "
            "numbers (check RescaleSlope, RescaleIntercept, WindowCenter and WindowWidth)"
        )
    image = (values - low) / max(high - low, 1e-6)
    image = np.clip(image, 0.0, 1.0, out=image)
    # MONOCHROME1 is inverted after the modality and VOI transforms, as the standard specifies.
    return 1.0 - image if photometric == "MONOCHROME1" else image


def _raw_value(ds: pydicom.Dataset, keyword: str) -> Any:
    """An element's value as stored (bytes for text), without pydicom's converting or warning."""
    try:
        element = ds.get_item(keyword)
    except Exception:  # a damaged element reads as absent; the header check says so
        return None
    return None if element is None else element.value


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    value = _raw_value(ds, keyword)
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value).strip(" \x00")


def _int(ds: pydicom.Dataset, keyword: str, default: int = 0) -> int:
    value = ds.get(keyword, default)
    return int(value) if value not in (None, "") else default


def parse_age(text: str) -> int | None:
    """Years from a PatientAge such as `062Y` or the SIIM files' bare `62`; None if implausible."""
    match = re.fullmatch(r"0*(\d{1,3})Y?", text.strip())
    if not match or int(match.group(1)) > MAX_PLAUSIBLE_AGE:
        return None
    return int(match.group(1))


def parse_pixel_spacing(ds: pydicom.Dataset) -> tuple[list[float] | None, str | None]:
    """(row, column) spacing in mm from PixelSpacing (else ImagerPixelSpacing), and a problem.

    A value that is not two positive numbers gives (None, the reason): the image is still read,
    only areas in cm² cannot be computed.
    """
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        text = _text(ds, keyword)
        if not text:
            continue
        parts = [p.strip() for p in text.split("\\")]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = []
        if len(values) == 2 and all(0 < v < 100 for v in values):
            return values, None
        return None, f"{keyword} {text[:40]!r} is not two positive numbers in mm; ignored"
    return None, None


def _check_rescale(ds: pydicom.Dataset, label: str) -> None:
    """A RescaleSlope of 0 makes every pixel one value, a non-finite one makes no numbers."""
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        text = _text(ds, keyword)
        if not text:
            continue
        try:
            value = float(text.split("\\")[0])
        except ValueError:
            value = float("nan")
        if not np.isfinite(value):
            reason = "is not a finite number"
        elif keyword == "RescaleSlope" and value == 0:
            reason = "is zero, which maps every pixel to the same value"
        else:
            continue
        raise ImageReadError(
            f"{label}: {keyword} {text[:40]!r} {reason}; the pixel values cannot be scaled. "
            "Fix the header (a RescaleSlope of 1 leaves the stored values as they are) or "
            "re-export the image"
        )


def read_header(ds: pydicom.Dataset, label: str) -> dict[str, Any]:
    """The metadata of a dataset: sizes, geometry, identifiers, and the problems found."""
    try:
        rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
        bits = _int(ds, "BitsStored")
    except Exception:  # pydicom parses the element here and raises many types
        raise ImageReadError(
            f"{label}: Rows, Columns or BitsStored is not a number: the header is damaged"
        ) from None
    if rows <= 0 or columns <= 0:
        raise ImageReadError(f"{label}: the header gives no image size (Rows x Columns)")
    check_min_size(label, rows, columns, "the header")
    _check_rescale(ds, label)
    problems: list[str] = []
    sop_uid = _text(ds, "SOPInstanceUID")
    for key in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID"):
        value = _text(ds, key)
        if not value and key != "SOPInstanceUID":
            problems.append(f"{key} is empty")
        elif value and key.endswith("UID") and not VALID_UID.fullmatch(value):
            problems.append(f"{key} {value[:70]!r} is not a valid UID")
    age_text = _text(ds, "PatientAge")
    age = parse_age(age_text)
    if age is None and age_text:
        problems.append(f"PatientAge {age_text!r} is not a plausible age in years; ignored")
    spacing, spacing_problem = parse_pixel_spacing(ds)
    problems += [spacing_problem] if spacing_problem else []
    path_stem = Path(label).stem if not label.startswith("<") else ""
    syntax = ds.file_meta.get("TransferSyntaxUID", None) if hasattr(ds, "file_meta") else None
    return {
        "ImageId": path_stem or sop_uid,
        "path": label,
        "source": "dicom",
        "Rows": rows,
        "Columns": columns,
        "PixelSpacing": spacing,
        "ViewPosition": _text(ds, "ViewPosition") or None,
        "PatientSex": _text(ds, "PatientSex") or None,
        "PatientAge": age,
        "PatientID": _text(ds, "PatientID") or None,
        "StudyInstanceUID": _text(ds, "StudyInstanceUID") or None,
        "SeriesInstanceUID": _text(ds, "SeriesInstanceUID") or None,
        "SOPInstanceUID": sop_uid or None,
        "Modality": _text(ds, "Modality") or None,
        "PhotometricInterpretation": _text(ds, "PhotometricInterpretation") or None,
        "BitsStored": bits or None,
        "TransferSyntaxUID": str(syntax) if syntax else None,
        "HeaderWarnings": list(dict.fromkeys(problems)),
    }


def _read_raster(data: bytes, label: str, max_pixels: int) -> tuple[np.ndarray, dict[str, Any]]:
    size = stream_size(data)
    if size is None or 0 in size:
        raise ImageReadError(
            f"{label} is not a readable image: expected a DICOM, PNG or JPEG chest X-ray"
        )
    check_pixel_count(label, *size, max_pixels, "the image header")
    check_min_size(label, *size, "the image header")
    if data.startswith(PNG_SIGNATURE) and not png_chunks_fit(data):
        raise ImageReadError(
            f"{label} is a damaged or truncated PNG (a chunk runs past the end of the file)"
        )
    # Any depth and colour, and the EXIF orientation applied (IMREAD_UNCHANGED would ignore it).
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if array is None:
        raise ImageReadError(
            f"{label} is not a readable image (damaged or truncated): expected a DICOM, PNG or "
            "JPEG chest X-ray"
        )
    if array.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if array.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        array = cv2.cvtColor(array, code)
    scale = 65535.0 if array.dtype == np.uint16 else 255.0
    image = array.astype(np.float32) / np.float32(scale)
    try:
        check_not_constant(image)
    except ImageReadError as err:
        raise ImageReadError(f"{label}: {err}") from None
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


def read_image(
    source: Source, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, dict[str, Any]]:
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
    if not data:
        raise _empty(label)
    suffix = Path(label).suffix.lower()
    if is_dicom_bytes(data[:132]) or suffix in DICOM_SUFFIXES:
        return read_dicom(data, name=label, max_pixels=max_pixels)
    return _read_raster(data, label, max_pixels)
