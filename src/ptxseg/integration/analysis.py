"""From DICOM instances to results a PACS can store: findings, a SEG (positives) and an SR (all).

Both PACS commands go through `Analyzer`: the same Predictor as `ptxseg predict`, the same SEG and
SR writers. The result objects get UIDs derived from the source image and a *result key* (ptxseg
version, model digest, operating point), so a rerun produces the very same instances and a PACS
query for the SR's UID tells whether an image already has this model's result.

Logs in a hospital end up in places patients' data must not: `image_ref` names an image by a
short digest of its SOP Instance UID (an operator can compute it for a known image), and
`redact` removes the header values that identify a patient from any error text.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ptxseg.data.uids import derived_uid, repaired_sop_uid
from ptxseg.inference.sr import report_uids

log = logging.getLogger("ptxseg.integration")

CHEST_RADIOGRAPH_MODALITIES = ("CR", "DX")
SEG_SERIES_NUMBER = 900
IDENTIFYING_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "OtherPatientIDs",
    "AccessionNumber",
    "StudyID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "InstitutionName",
    "ReferringPhysicianName",
)


def image_ref(uid: str, prefix: str = "img") -> str:
    """A short, stable name for an image in logs: 'img-' + 12 hex digits of SHA-256 of its UID."""
    return f"{prefix}-" + hashlib.sha256(str(uid).encode()).hexdigest()[:12]


def redact(text: str, ds) -> str:
    """`text` with the values of the header's identifying attributes replaced by '<redacted>'."""
    for keyword in IDENTIFYING_KEYWORDS:
        value = str(ds.get(keyword, "") or "") if ds is not None else ""
        if len(value) >= 3:
            text = text.replace(value, "<redacted>")
    return text


def is_chest_radiograph(ds) -> bool:
    return str(ds.get("Modality", "")).upper() in CHEST_RADIOGRAPH_MODALITIES


@dataclass
class ImageResult:
    """One analysed image: its log name, findings, the datasets to store (SEG first, SR last)."""

    ref: str
    source_sop_instance_uid: str
    findings: dict[str, Any]
    outputs: list = field(default_factory=list)

    @property
    def kinds(self) -> list[str]:
        return [str(ds.Modality) for ds in self.outputs]


@dataclass
class ImageFailure:
    """An image that could not be analysed; `error` carries no patient identifiers."""

    ref: str
    error: str


def dataset_from_bytes(blob: bytes):
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(blob))


def dataset_to_bytes(ds) -> bytes:
    """A Part-10 file of a dataset (as WADO-RS or C-STORE delivered it)."""
    import pydicom

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pydicom.dcmwrite(buf, ds, enforce_file_format=getattr(ds, "file_meta", None) is not None)
    return buf.getvalue()


class Analyzer:
    """Segment DICOM instances with one Predictor and build their SEG and SR datasets.

    `model_name` is what the SR names the model; `result_key` identifies this model and operating
    point in the derived UIDs; `max_pixels` is the largest image a header may claim (larger ones
    fail before decoding: decompression bombs). Not thread-safe: one worker calls `analyse`.
    """

    def __init__(self, predictor, model_name: str, result_key: str, max_pixels: int | None = None):
        from ptxseg.data.dicom import DEFAULT_MAX_PIXELS

        self.predictor = predictor
        self.model_name = model_name
        self.result_key = result_key
        self.max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels

    @classmethod
    def for_model(cls, predictor, max_pixels: int | None = None) -> Analyzer:
        """Model name and result key from the digest of the model file the predictor loaded
        (`LoadedModel.weights_sha256`: its weights for a folder) and the operating point."""
        from ptxseg import __version__

        digest = predictor.loaded.weights_sha256[:12]
        name = f"U-Net {predictor.encoder} sha256:{digest}"
        op = json.dumps(
            dict(predictor.operating_point.to_dict(), tta=predictor.tta), sort_keys=True
        )
        return cls(predictor, name, f"{__version__}|{name}|{op}", max_pixels)

    def report_uid(self, source_sop_instance_uid: str) -> str:
        """The SOP Instance UID that this analyzer's SR of that image has (and will have)."""
        return report_uids(source_sop_instance_uid, self.result_key)[1]

    def seg_uids(self, source_sop_instance_uid: str) -> tuple[str, str]:
        series = derived_uid("ptxseg-seg-series", source_sop_instance_uid, self.result_key)
        return series, derived_uid(series, "instance")

    def analyse(self, blobs: Sequence[bytes]) -> list[ImageResult | ImageFailure]:
        """Part-10 DICOM files (bytes) -> one result or failure each, in order; never raises."""
        from ptxseg.data.dicom import read_image

        loaded, outcomes = [], [None] * len(blobs)
        for index, blob in enumerate(blobs):
            ds = None
            try:
                ds = dataset_from_bytes(blob)
                sop = repaired_uid(ds)
                ref = image_ref(sop)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # header problems go to the findings
                    image, meta = read_image(blob, name=ref, max_pixels=self.max_pixels)
                loaded.append((index, ds, sop, ref, image, meta))
            except Exception as err:  # noqa: BLE001 - a bad image must not stop the others
                outcomes[index] = failure(ds, err)
        try:
            predictions = self.predictor.predict_batch(
                [item[4] for item in loaded], [item[5] for item in loaded]
            )
        except Exception as err:  # noqa: BLE001 - reported per image
            for index, ds, *_ in loaded:
                outcomes[index] = failure(ds, err)
            return outcomes
        for (index, ds, sop, ref, _image, meta), prediction in zip(
            loaded, predictions, strict=True
        ):
            try:
                outcomes[index] = self.results(ds, sop, ref, meta, prediction)
            except Exception as err:  # noqa: BLE001 - reported per image
                outcomes[index] = failure(ds, err)
        return outcomes

    def results(self, ds, sop: str, ref: str, meta: dict[str, Any], prediction) -> ImageResult:
        from ptxseg.inference.seg import build_segmentation, list_with_header_warnings
        from ptxseg.inference.sr import build_report

        findings = dict(prediction.findings, image_id=ref, input_file=None)
        if meta.get("HeaderWarnings"):
            findings["header_warnings"] = [redact(w, ds) for w in meta["HeaderWarnings"]]
        outputs = []
        segmentation = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # header repairs go to the findings, below
            notes: list[str] = []
            if prediction.mask.any():
                series, instance = self.seg_uids(sop)
                segmentation, notes = build_segmentation(ds, prediction.mask, series, instance)
                outputs.append(segmentation)
            report, report_notes = build_report(
                ds,
                findings,
                segmentation=segmentation,
                mask=prediction.mask,
                model_name=self.model_name,
                result_key=self.result_key,
            )
        outputs.append(report)
        list_with_header_warnings(findings, [redact(n, ds) for n in notes + report_notes])
        return ImageResult(ref, sop, findings, outputs)


def repaired_uid(ds) -> str:
    """The SOP Instance UID that results reference (repaired as the SEG and SR writers do)."""
    return repaired_sop_uid(ds)[0]


def failure(ds, err: BaseException) -> ImageFailure:
    ref = "img-unreadable"
    if ds is not None and ds.get("SOPInstanceUID"):
        ref = image_ref(repaired_uid(ds))
    return ImageFailure(ref, redact(f"{type(err).__name__}: {err}", ds))


def describe(outcome: ImageResult | ImageFailure) -> str:
    """One log line for an outcome, without patient identifiers."""
    if isinstance(outcome, ImageFailure):
        return f"{outcome.ref}: failed: {outcome.error}"
    f = outcome.findings
    if not f["pneumothorax"]:
        verdict = f"no pneumothorax (p={f['probability']:.2f})"
    else:
        size = ""
        if f.get("bts_class_est"):
            size = f", est. BTS {f['bts_class_est']} / ACCP {f['accp_class_est']}"
        verdict = f"pneumothorax {f.get('side') or 'side n/a'}{size} (p={f['probability']:.2f})"
    return f"{outcome.ref}: {verdict}; {' + '.join(outcome.kinds)}"
