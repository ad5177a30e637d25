"""Fuzzing the DICOM, PNG and JPEG readers: mutated header values, flipped bytes, truncations.

Every outcome is either an image in [0, 1] with its metadata, or an `ImageReadError` whose message
names the file and says what is wrong in words (no Python internals); never another exception, and
never a hang (hypothesis' deadline). `HYPOTHESIS_PROFILE=fuzz` draws 20,000 cases per test.
"""

import re
import tempfile
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from dicom_files import chest_like, write_dicom
from hypothesis import given
from hypothesis import strategies as st

from ptxseg.data.dicom import ImageReadError, read_image

pytestmark = pytest.mark.filterwarnings("ignore")

# Tags whose values the readers use, plus a few others; their bytes are replaced in place.
TAGS = [
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "SamplesPerPixel",
    "PixelRepresentation",
    "PhotometricInterpretation",
    "PixelSpacing",
    "RescaleSlope",
    "RescaleIntercept",
    "WindowCenter",
    "WindowWidth",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "PatientAge",
    "PatientID",
    "ViewPosition",
    "TransferSyntaxUID",
    "PixelData",
]
INTERNALS = re.compile(
    r"not supported between|has no attribute|NoneType|unhashable|index out of range|"
    r"Traceback|<class |object is not|takes \d+ positional|unpack|struct\.error"
)
VALUE_BYTES = st.one_of(
    st.binary(min_size=1, max_size=16),
    st.sampled_from([b"abc", b"-1", b"0", b"65535", b"1e308", b"nan", b"\\", b"\x00", b"1\\2\\3"]),
)


@cache
def sources() -> dict[str, bytes]:
    """Valid DICOMs of each reading path, the starting points of the mutations."""
    pixels = chest_like(48)
    wide = (pixels.astype(np.uint16) * 16).astype(np.uint16)
    variants = {
        "jpeg": (pixels, {"jpeg": True}),
        "native": (pixels, {}),
        "window": (wide, {"bits_stored": 12, "WindowCenter": 2048, "WindowWidth": 1024}),
        "rescale": (wide, {"bits_stored": 12, "RescaleSlope": 2, "RescaleIntercept": -100}),
        "mono1": (pixels, {"photometric": "MONOCHROME1"}),
    }
    with tempfile.TemporaryDirectory() as folder:
        return {
            kind: write_dicom(Path(folder) / f"{kind}.dcm", array, **tags).read_bytes()
            for kind, (array, tags) in variants.items()
        }


def _offsets(data: bytes) -> dict[str, tuple[int, int]]:
    """Where each tag's value sits in the file: (offset, length)."""
    import io

    ds = pydicom.dcmread(io.BytesIO(data))
    found = {}
    for keyword in TAGS:
        for where in (ds, ds.file_meta):
            raw = where.get_item(keyword) if keyword in where else None
            if raw is not None and getattr(raw, "value_tell", None) and raw.length not in (0, None):
                length = raw.length if raw.length != 0xFFFFFFFF else 64
                found[keyword] = (raw.value_tell, length)
    return found


def _check(data: bytes, name: str) -> None:
    try:
        image, meta = read_image(data, name=name)
    except ImageReadError as err:
        text = str(err)
        assert text.startswith(name), text
        assert not INTERNALS.search(text), text
        return
    assert image.ndim == 2 and image.dtype == np.float32
    assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1
    assert image.shape == (meta["Rows"], meta["Columns"])


@given(
    kind=st.sampled_from(["jpeg", "native", "window", "rescale", "mono1"]),
    edits=st.lists(st.tuples(st.sampled_from(TAGS), VALUE_BYTES, st.integers(0, 15)), max_size=3),
)
def test_fuzz_mutated_header_values(kind, edits):
    data = bytearray(sources()[kind])
    offsets = _offsets(sources()[kind])
    for keyword, value, shift in edits:
        if keyword in offsets:
            at, length = offsets[keyword]
            start = at + min(shift, max(length - 1, 0))
            chunk = value[: max(1, at + length - start)]
            data[start : start + len(chunk)] = chunk
    _check(bytes(data), "fuzz.dcm")


@given(
    kind=st.sampled_from(["jpeg", "native", "window"]),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=6),
)
def test_fuzz_flipped_bytes(kind, flips):
    data = bytearray(sources()[kind])
    for where, value in flips:
        data[int(where * len(data))] = value
    _check(bytes(data), "flip.dcm")


@given(kind=st.sampled_from(["jpeg", "native", "window"]), keep=st.floats(0, 1))
def test_fuzz_truncated_files(kind, keep):
    data = sources()[kind]
    _check(data[: int(keep * len(data))], "cut.dcm")


@given(
    ext=st.sampled_from([".png", ".jpg"]),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=6),
    keep=st.floats(0.05, 1),
)
def test_fuzz_png_and_jpeg(ext, flips, keep):
    data = bytearray(cv2.imencode(ext, chest_like(48))[1].tobytes())
    for where, value in flips:
        data[int(where * len(data))] = value
    _check(bytes(data[: max(1, int(keep * len(data)))]), f"fuzz{ext}")
