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
