"""The downloadable files of a web-service answer: the overlay PNG and the DICOM SEG.

Both are drawn by the same code as `ptxseg predict` writes to disk, so the page and the command line
show the same picture.
"""

from __future__ import annotations

import io
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ptxseg.inference.findings import caption
from ptxseg.inference.outputs import encode_png, overlay_image


class SegUnavailableError(RuntimeError):
    """This installation cannot write DICOM SEG objects."""


class SegBuildError(ValueError):
    """The source DICOM lacks what a SEG must reference or copy; the message says what."""


class DefaultRenderer:
    """Overlay via `inference.outputs.overlay_image`, SEG via `inference.seg.build_segmentation`."""

    def overlay_png(self, image: np.ndarray, prediction: Any) -> bytes:
        mask = np.asarray(prediction.mask, dtype=bool)
        return encode_png(overlay_image(image, mask, caption(prediction.findings)))

    def seg_dicom(self, dicom: bytes, prediction: Any) -> bytes:
        """The SEG as bytes. The source is written to a private temporary folder (the SEG writer
        reads a path), which is removed before returning."""
        try:
            from ptxseg.inference.seg import build_segmentation
        except ImportError as err:
            raise SegUnavailableError(
                f"DICOM SEG output is not available in this installation ({err}); "
                "install highdicom to enable it"
            ) from None
        mask = np.asarray(prediction.mask, dtype=bool)
        with tempfile.TemporaryDirectory(prefix="ptxseg-seg-") as tmp:
            source = Path(tmp) / "source.dcm"
            source.write_bytes(dicom)
            try:
                seg, _notes = build_segmentation(source, mask)
            except (AttributeError, KeyError, ValueError, TypeError) as err:
                raise SegBuildError(
                    f"A DICOM SEG could not be made from this DICOM ({err}); the findings and the "
                    "mask are still valid. The source header may lack attributes a SEG must copy."
                ) from None
        buf = io.BytesIO()
        seg.save_as(buf)
        return buf.getvalue()


def keep_identifiers_out_of_logs() -> None:
    """Silence the warnings and library log records that quote DICOM header values, process-wide.

    pydicom logs and warns invalid values verbatim (an invalid SOPInstanceUID is an identifier);
    the reader and the SEG writer warn about them too. The client gets the same facts in the
    answer. `warnings.catch_warnings` is not thread-safe, so these are global settings made once.
    """
    from ptxseg.data.dicom import DicomHeaderWarning

    for name in ("pydicom", "highdicom"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", category=DicomHeaderWarning)
    warnings.filterwarnings("ignore", message="Invalid value for VR", category=UserWarning)
    try:
        from ptxseg.inference.seg import InvalidSourceUIDWarning
    except ImportError:
        return
    warnings.filterwarnings("ignore", category=InvalidSourceUIDWarning)


def default_renderer() -> DefaultRenderer:
    return DefaultRenderer()
