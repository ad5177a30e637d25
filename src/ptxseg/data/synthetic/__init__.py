"""Synthetic SIIM-style chest radiographs, so that every ptxseg step runs without a download.

`radiograph` draws a case (anatomy, the pneumothorax, a chest drain); `dataset_writer` plans the
cases and writes them as the Kaggle stage-1 layout (JPEG Baseline DICOMs, `train-rle.csv`,
`metadata.csv`, a sample panel). The names below are the package's entry points.
"""

from ptxseg.data.synthetic.dataset_writer import (
    CSV_NAME,
    IMAGES_DIR,
    METADATA_NAME,
    SECONDARY_CAPTURE,
    Appearance,
    check_out_dir,
    dicom_bytes,
    generate_dataset,
    parse_drains,
    pixel_spacing,
    plan_cases,
    plot_samples,
)
from ptxseg.data.synthetic.radiograph import CaseSpec, render_case

__all__ = [
    "CSV_NAME",
    "IMAGES_DIR",
    "METADATA_NAME",
    "SECONDARY_CAPTURE",
    "Appearance",
    "CaseSpec",
    "check_out_dir",
    "dicom_bytes",
    "generate_dataset",
    "parse_drains",
    "pixel_spacing",
    "plan_cases",
    "plot_samples",
    "render_case",
]
