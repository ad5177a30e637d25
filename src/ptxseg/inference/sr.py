"""DICOM Structured Report of one image's findings: a TID 1500 measurement report (highdicom).

Every image gets one, positive or negative, so that a viewer or a PACS query can tell "analysed,
nothing found" from "not analysed". Content (a Comprehensive SR, content qualification RESEARCH,
completion COMPLETE, verification UNVERIFIED):

- observer: the device "ptxseg" (manufacturer ptxseg, model name = the model that was run);
- procedure reported: Chest imaging (SCT 413815006);
- one image measurement group (TID 1501) whose source is the radiograph, with
  - finding type Pneumothorax (SCT 36118008); finding site Pleura with the side (patient's terms)
    when a pneumothorax was found and the view allows a side;
  - algorithm identification: ptxseg and its version, the model, the operating point and its
    name (default, or a named one such as triage) as parameters;
  - qualitative evaluations: Pneumothorax = Present / Absent (SCT), and for positives the BTS and
    the ACCP size class (Small / Large, SCT), both named as estimates;
  - measurements: the model's probability (no units) and, for a model with a calibrator, the
    calibrated probability (`CALPROB`), the area (cm²; needs PixelSpacing), the BTS
    rim distance at the hilum level and the ACCP apex-to-cupola distance (mm, measurement method
    Estimated, finding sites Hilum of lung / Apex of lung);
- when a SEG is given (positives): a planar ROI group (TID 1410) that references its segment, with
  the area.

Concepts without a standard code use the local coding scheme `99PTXSEG` (DICOM's convention for
private schemes), declared in the CodingSchemeIdentificationSequence. Invalid source UIDs (real
SIIM files) are repaired as for the SEG (`seg.repaired_source`).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ptxseg import atomic
from ptxseg.data.uids import derived_uid
from ptxseg.inference.seg import repaired_source

LOCAL_SCHEME = "99PTXSEG"
SERIES_NUMBER = 901
SERIES_DESCRIPTION = "ptxseg pneumothorax report"

# (value, scheme, meaning)
PNEUMOTHORAX = ("36118008", "SCT", "Pneumothorax")
PRESENT, ABSENT = ("52101004", "SCT", "Present"), ("272519000", "SCT", "Absent")
SIDES = {
    "right": ("24028007", "SCT", "Right"),
    "left": ("7771000", "SCT", "Left"),
    "bilateral": ("51440002", "SCT", "Bilateral"),
}
SIZE = {"small": ("255507004", "SCT", "Small"), "large": ("255509001", "SCT", "Large")}
PLEURA = ("3120008", "SCT", "Pleura")
HILUM = ("46750007", "SCT", "Hilum of lung")
APEX = ("86598002", "SCT", "Apex of lung")
ESTIMATED = ("414135002", "SCT", "Estimated")
CHEST_IMAGING = ("413815006", "SCT", "Chest imaging")
AREA = ("42798000", "SCT", "Area")
PROBABILITY = ("PROB", LOCAL_SCHEME, "Pneumothorax probability (model output)")
CALIBRATED = ("CALPROB", LOCAL_SCHEME, "Pneumothorax probability, calibrated")
BTS_RIM = ("BTSRIM", LOCAL_SCHEME, "Interpleural rim distance at hilum level (BTS), estimated")
ACCP_APEX = ("ACCPAPEX", LOCAL_SCHEME, "Apex to cupola distance (ACCP), estimated")
BTS_CLASS = ("BTSSIZE", LOCAL_SCHEME, "Pneumothorax size class (BTS), estimated")
ACCP_CLASS = ("ACCPSIZE", LOCAL_SCHEME, "Pneumothorax size class (ACCP), estimated")
UNITS = {
    "cm2": ("cm2", "UCUM", "square centimeter"),
    "mm": ("mm", "UCUM", "millimeter"),
    "1": ("1", "UCUM", "no units"),
}


def code(concept: tuple[str, str, str]):
    import highdicom as hd

    return hd.sr.CodedConcept(*concept)


def describe_operating_point(op: dict[str, Any] | None) -> str:
    if not op:
        return "operating point: default"
    keys = ("top", "bottom", "min_area", "applied_tta")
    return "operating point: " + ", ".join(f"{k}={op[k]}" for k in keys if op.get(k) is not None)


def model_description(findings: dict[str, Any], model_name: str | None = None) -> str:
    """The model as the report names it: given, else 'U-Net <encoder>'."""
    return model_name or f"U-Net {findings.get('encoder') or 'unknown encoder'}"


def report_uids(source_sop_uid: str, result_key: str = "") -> tuple[str, str]:
    """(series UID, SOP instance UID) of the report on one image, the same for every rerun."""
    from ptxseg import __version__

    series = derived_uid("ptxseg-sr-series", source_sop_uid, __version__, result_key)
    return series, derived_uid(series, "instance")


def _measurement(name, value, unit, site=None, laterality=None, estimated=False):
    import highdicom as hd

    sites = None
    if site is not None:
        sides = code(laterality) if laterality else None
        sites = [hd.sr.FindingSite(anatomic_location=code(site), laterality=sides)]
    return hd.sr.Measurement(
        name=code(name),
        value=float(value),
        unit=code(UNITS[unit]),
        method=code(ESTIMATED) if estimated else None,
        finding_sites=sites,
    )


def area_measurement(findings: dict[str, Any]) -> list:
    area = findings.get("area_cm2")
    return [] if area is None else [_measurement(AREA, area, "cm2")]


def measurements(findings: dict[str, Any]) -> list:
    """The TID 300 measurements that the findings allow (missing values are left out)."""
    laterality = SIDES.get(findings.get("side") or "")
    items = [_measurement(PROBABILITY, findings["probability"], "1"), *area_measurement(findings)]
    if findings.get("calibrated_probability") is not None:  # models with a calibrator
        items.insert(1, _measurement(CALIBRATED, findings["calibrated_probability"], "1"))
    for name, key, site in (
        (BTS_RIM, "bts_rim_mm_est", HILUM),
        (ACCP_APEX, "accp_apex_mm_est", APEX),
    ):
        if findings.get(key) is not None:
            items.append(_measurement(name, findings[key], "mm", site, laterality, True))
    return items


def evaluations(findings: dict[str, Any]) -> list:
    import highdicom as hd

    present = PRESENT if findings["pneumothorax"] else ABSENT
    items = [hd.sr.QualitativeEvaluation(code(PNEUMOTHORAX), code(present))]
    for name, key in ((BTS_CLASS, "bts_class_est"), (ACCP_CLASS, "accp_class_est")):
        if findings.get(key) in SIZE:
            items.append(hd.sr.QualitativeEvaluation(code(name), code(SIZE[findings[key]])))
    return items


def build_report(
    source,
    findings: dict[str, Any],
    *,
    segmentation=None,
    model_name: str | None = None,
    result_key: str = "",
    series_uid: str | None = None,
    sop_uid: str | None = None,
):
    """(highdicom ComprehensiveSR, notes) for one image's findings.

    `source` is the DICOM path or pydicom Dataset the findings are about (not modified);
    `segmentation` the SEG made from the same findings, referenced by a planar ROI group.
    The UIDs are derived from the source image, the ptxseg version and `result_key` unless given.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from ptxseg import __version__

    ds, notes, _label = repaired_source(source, stacklevel=4)
    model = model_description(findings, model_name)
    default_series, default_sop = report_uids(ds.SOPInstanceUID, result_key)
    algorithm = hd.sr.AlgorithmIdentification(
        name="ptxseg",
        version=__version__,
        parameters=[
            f"model: {model}",
            describe_operating_point(findings.get("operating_point")),
            f"operating point name: {findings.get('operating_point_name') or 'default'}",
        ],
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid("ptxseg-device", model, __version__),
            name="ptxseg",
            manufacturer_name="ptxseg",
            model_name=model[:64],
        ),
    )
    laterality = SIDES.get(findings.get("side") or "") if findings["pneumothorax"] else None
    sites = (
        [hd.sr.FindingSite(anatomic_location=code(PLEURA), laterality=code(laterality))]
        if laterality
        else None
    )
    tracking = hd.sr.TrackingIdentifier(
        uid=derived_uid(default_sop, "tracking"), identifier="ptxseg pneumothorax"
    )
    groups = [
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            finding_type=code(PNEUMOTHORAX),
            algorithm_id=algorithm,
            finding_sites=sites,
            measurements=measurements(findings),
            qualitative_evaluations=evaluations(findings),
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ds)],
        )
    ]
    evidence = [ds]
    if segmentation is not None:
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=derived_uid(default_sop, "roi"), identifier="ptxseg pneumothorax mask"
                ),
                referenced_segment=hd.sr.ReferencedSegmentationFrame(
                    sop_class_uid=segmentation.SOPClassUID,
                    sop_instance_uid=segmentation.SOPInstanceUID,
                    frame_number=1,
                    segment_number=1,
                    source_image=hd.sr.SourceImageForSegmentation(
                        ds.SOPClassUID, ds.SOPInstanceUID
                    ),
                ),
                finding_type=code(PNEUMOTHORAX),
                algorithm_id=algorithm,
                finding_sites=sites,
                measurements=area_measurement(findings) or None,
            )
        )
        evidence.append(segmentation)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=code(CHEST_IMAGING),
        imaging_measurements=groups,
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=report,
        series_instance_uid=series_uid or default_series,
        series_number=SERIES_NUMBER,
        sop_instance_uid=sop_uid or default_sop,
        instance_number=1,
        manufacturer="ptxseg",
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=SERIES_DESCRIPTION,
        manufacturer_model_name=model[:64],
        software_versions=__version__,
        content_qualification=hd.ContentQualificationValues.RESEARCH,
        coding_schemes=[
            hd.coding_schemes.CodingSchemeIdentificationItem(
                designator=LOCAL_SCHEME,
                name="ptxseg local codes",
                responsible_organization="ptxseg",
            )
        ],
    )
    return sr, notes


def write_report(
    source_path: str | Path,
    findings: dict[str, Any],
    out: str | Path,
    segmentation=None,
    model_name: str | None = None,
) -> Path:
    """Write the SR of one image's findings to `out` (atomically); UID repairs as `sr_notes`."""
    sr, notes = build_report(
        source_path, findings, segmentation=segmentation, model_name=model_name
    )
    buf = io.BytesIO()
    sr.save_as(buf)
    path = atomic.write_bytes(out, buf.getvalue())
    if notes:
        findings["sr_notes"] = notes
    return path


def read_report(source) -> dict[str, Any]:
    """The content of a report written by `build_report` (path, bytes or Dataset), as a dict.

    Keys: pneumothorax (bool), side, probability, calibrated_probability, area_cm2,
    bts_rim_mm_est, bts_class_est, accp_apex_mm_est, accp_class_est, algorithm_version,
    algorithm_parameters,
    source_sop_instance_uid, segmentation_sop_instance_uid (None without a SEG).
    """
    import highdicom as hd
    import pydicom
    from highdicom.sr.utils import find_content_items
    from pydicom.sr.codedict import codes

    if isinstance(source, bytes):
        source = pydicom.dcmread(io.BytesIO(source))
    elif not isinstance(source, pydicom.Dataset):
        source = pydicom.dcmread(str(source))
    report = hd.sr.ComprehensiveSR.from_dataset(source).content
    group = report.get_image_measurement_groups()[0]
    values = {item.name.value: item.value for item in group.get_measurements()}
    qualitative = {
        item.name.value: item.value.meaning.lower() for item in group.get_qualitative_evaluations()
    }
    sites = group.finding_sites
    side = sites[0].laterality.meaning.lower() if sites and sites[0].laterality else None

    def texts(name) -> list[str]:
        found = find_content_items(group[0], name=name, recursive=True)
        return list(dict.fromkeys(item.TextValue for item in found))

    rois = report.get_planar_roi_measurement_groups()
    return {
        "pneumothorax": qualitative.get(PNEUMOTHORAX[0]) == "present",
        "side": side,
        "probability": values.get(PROBABILITY[0]),
        "calibrated_probability": values.get(CALIBRATED[0]),
        "area_cm2": values.get(AREA[0]),
        "bts_rim_mm_est": values.get(BTS_RIM[0]),
        "bts_class_est": qualitative.get(BTS_CLASS[0]),
        "accp_apex_mm_est": values.get(ACCP_APEX[0]),
        "accp_class_est": qualitative.get(ACCP_CLASS[0]),
        "algorithm_version": next(iter(texts(codes.DCM.AlgorithmVersion)), None),
        "algorithm_parameters": texts(codes.DCM.AlgorithmParameters),
        "source_sop_instance_uid": group.source_images[0].referenced_sop_instance_uid,
        "segmentation_sop_instance_uid": (
            rois[0].referenced_segmentation_frame[0].referenced_sop_instance_uid if rois else None
        ),
    }
