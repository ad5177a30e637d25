"""Write small DICOM variants with pydicom for the reader's tests."""

from pathlib import Path

import cv2
import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    generate_uid,
)


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    jpeg: bool = False,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    pixel_data: bool = True,
    **tags,
) -> Path:
    """A minimal, valid CR image; `tags` set or override header keywords."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientSex, ds.PatientAge = "p1", "F", "045Y"
    ds.Modality, ds.ViewPosition, ds.PixelSpacing = "CR", "PA", [0.168, 0.168]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored = bits, bits_stored or bits
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, 0
    for key, value in tags.items():
        setattr(ds, key, value)
    if pixel_data:
        if jpeg:
            ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])
            assert ok
            ds.PixelData = encapsulate([encoded.tobytes()])
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = True
        else:
            ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def chest_like(size: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth uint8 image with structure (JPEG-friendly, not constant)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = 120 + 80 * np.sin(6 * x) * np.cos(4 * y) + rng.normal(0, 3, (size, size))
    return np.clip(base, 0, 255).astype(np.uint8)


def replace_bytes(path: Path, old: bytes, new: bytes) -> Path:
    """Overwrite one header value in place (same length), for values pydicom refuses to write."""
    data = path.read_bytes()
    assert data.count(old) == 1 and len(old) == len(new)
    path.write_bytes(data.replace(old, new))
    return path


def claim_size(data: bytes, height: int, width: int) -> bytes:
    """A PNG or JPEG whose header claims height x width pixels (a decompression bomb's header)."""
    import struct
    import zlib

    out = bytearray(data)
    if data.startswith(b"\x89PNG"):
        out[16:24] = struct.pack(">II", width, height)
        out[29:33] = struct.pack(">I", zlib.crc32(bytes(out[12:29])) & 0xFFFFFFFF)
    else:
        at = out.find(b"\xff\xc0")
        out[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(out)


def tiny_bomb(kind: str = "jpeg", height: int = 30000, width: int = 30000) -> bytes:
    """A few hundred bytes whose header claims height x width pixels."""
    ok, encoded = cv2.imencode(".jpg" if kind == "jpeg" else ".png", np.zeros((8, 8), np.uint8))
    assert ok
    return claim_size(encoded.tobytes(), height, width)
