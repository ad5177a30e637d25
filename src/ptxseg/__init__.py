"""ptxseg: pneumothorax segmentation for chest X-rays (SIIM-ACR).

The public API is importable from the package root. Names resolve on first use, so that
`import ptxseg` (and the CLI's `--help`) does not pay for torch or pydicom.
"""

from importlib import import_module

__version__ = "0.1.0"

_PUBLIC = {
    "rle_decode": "ptxseg.data.rle",
    "rle_encode": "ptxseg.data.rle",
    "detect_encoding": "ptxseg.data.rle",
    "read_annotations": "ptxseg.data.rle",
    "read_dicom": "ptxseg.data.dicom",
    "read_image": "ptxseg.data.dicom",
    "load_model": "ptxseg.model.checkpoint",
    "OperatingPoint": "ptxseg.model.operating_point",
    "Predictor": "ptxseg.inference.predictor",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'ptxseg' has no attribute {name!r}")
