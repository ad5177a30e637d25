"""DICOM Structured Report of one image's findings: a TID 1500 measurement report (highdicom).

Every image gets one, positive or negative, so that a viewer or a PACS query can tell "analysed,
nothing found" from "not analysed". Content (a Comprehensive SR in UTF-8, content qualification
RESEARCH, completion COMPLETE, verification UNVERIFIED):

- language English (TID 1204, highdicom's default); observer: the device "ptxseg" (TID 1004: a
  UID, manufacturer ptxseg, model name = the model that was run); procedure reported: Chest
  imaging (SCT); the Image Library (TID 1600) naming the radiograph;
- one image measurement group (TID 1501) whose source is the radiograph, with
  - finding type Pneumothorax (SCT); finding site Pleura with the side (patient's terms) when a
    pneumothorax was found and the view allows a side;
  - algorithm identification (TID 4019): ptxseg and its version; the model, the operating
    point and its name (default, or a named one such as triage) as algorithm parameters;
  - qualitative evaluations: Pneumothorax = Present / Absent (SCT), and for positives the BTS and
    the ACCP size class (Small / Large, SCT);
  - measurements (TID 300, `IMAGE_MEASUREMENTS`): the model's score, for a model with a
    calibrator the calibrated probability, the area (SCT Area, cm²),
    the BTS rim distance and the ACCP apex distance (DCM Distance, mm, finding site Hilum of lung
    / Apex of lung, method Estimated);
- for positives, one planar ROI group (TID 1410) per region of the mask (the `MAX_REGIONS`
  largest): its outline as a closed SCOORD POLYLINE on the source image, its area, its side and
  the estimates of that side; these are what a viewer draws (OHIF draws only SCOORD groups);
- when a SEG is given (positives): a planar ROI group (TID 1410) that references its segment,
  with the total area.

The pneumothorax of an image is one finding with one Tracking Unique Identifier, shared by the
image group, the SEG reference and the outline of its largest region: a viewer that merges groups
by tracking UID (OHIF does) shows them as one measurement drawn on the image. Further regions have
their own tracking UIDs.

Standard codes throughout (SNOMED CT, DCM, UCUM); a local scheme `99PTXSEG` (DICOM's convention
for private schemes, declared in the CodingSchemeIdentificationSequence) only for the concepts in
`LOCAL_CODES`, each with the reason no standard concept fits. Invalid source values (real SIIM
files) are repaired as for the SEG (`seg.repaired_source`).

To add a numeric result, add a `Numeric` row to `IMAGE_MEASUREMENTS` (and to `LOCAL_CODES` when it
needs a local code); `read_report` reads every row back by its findings key.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptxseg.data.uids import derived_uid
from ptxseg.inference.seg import CHARACTER_SET, list_with_header_warnings, repaired_source
from ptxseg.util import atomic

LOCAL_SCHEME = "99PTXSEG"
SERIES_NUMBER = 901
SERIES_DESCRIPTION = "ptxseg pneumothorax report"
MAX_REGIONS = 16  # outlines per report; the SEG holds every pixel, the image group the total
OUTLINE_TOLERANCE_PX = 0.75  # polygon simplification: no outline point moves farther than this

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
DISTANCE = ("121206", "DCM", "Distance")
PROBABILITY = ("PROB", LOCAL_SCHEME, "Pneumothorax model score (uncalibrated)")
CALIBRATED = ("CALPROB", LOCAL_SCHEME, "Pneumothorax probability, calibrated")
BTS_CLASS = ("BTSSIZE", LOCAL_SCHEME, "Pneumothorax size class (BTS), estimated")
ACCP_CLASS = ("ACCPSIZE", LOCAL_SCHEME, "Pneumothorax size class (ACCP), estimated")
UNITS = {
    "cm2": ("cm2", "UCUM", "square centimeter"),
    "mm": ("mm", "UCUM", "millimeter"),
    "1": ("1", "UCUM", "no units"),
}
# Each local code and why no standard concept fits (docs/conformance.md lists them).
LOCAL_CODES = {
    PROBABILITY: "the network's sigmoid output is a score, not a calibrated probability; DICOM's "
    "Probability (DCM 122157) would claim a calibration the score lacks",
    CALIBRATED: "the score mapped through the model's calibrator (isotonic or Platt, fitted on the "
    "validation split); it is kept apart from DCM 122157 because its calibration holds for the "
    "population of that split only (docs/statistics.md)",
    BTS_CLASS: "DICOM's Size Descriptor (DCM 112025) takes Small / Large but cannot say by which "
    "guideline's threshold; the BTS class (rim >= 2 cm at the hilum) and the ACCP class can "
    "disagree on one image",
    ACCP_CLASS: "as for the BTS class: the ACCP class (apex to cupola >= 3 cm) needs its own "
    "concept name",
}


@dataclass(frozen=True)
class Numeric:
    """One TID 300 measurement of the image group: the findings key that holds its value."""

    key: str
    concept: tuple[str, str, str]
    unit: str
    site: tuple[str, str, str] | None = None
    estimated: bool = False


AREA_MEASUREMENT = Numeric("area_cm2", AREA, "cm2")
SIDE_MEASUREMENTS = (  # the estimates, given per side in each region group
    Numeric("bts_rim_mm_est", DISTANCE, "mm", HILUM, estimated=True),
    Numeric("accp_apex_mm_est", DISTANCE, "mm", APEX, estimated=True),
)
IMAGE_MEASUREMENTS = (
    Numeric("probability", PROBABILITY, "1"),
    Numeric("calibrated_probability", CALIBRATED, "1"),  # models with a calibrator
    AREA_MEASUREMENT,
    *SIDE_MEASUREMENTS,
)
CLASS_EVALUATIONS = (("bts_class_est", BTS_CLASS), ("accp_class_est", ACCP_CLASS))


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


def _measurement(item: Numeric, value, laterality=None):
    import highdicom as hd

    sites = None
    if item.site is not None:
        sides = code(laterality) if laterality else None
        sites = [hd.sr.FindingSite(anatomic_location=code(item.site), laterality=sides)]
    return hd.sr.Measurement(
        name=code(item.concept),
        value=float(value),
        unit=code(UNITS[item.unit]),
        method=code(ESTIMATED) if item.estimated else None,
        finding_sites=sites,
    )


def measurements(values: dict[str, Any], rows=IMAGE_MEASUREMENTS, laterality=None) -> list:
    """The TID 300 measurements of `rows` that `values` holds (missing values are left out)."""
    return [
        _measurement(row, values[row.key], laterality if row.site else None)
        for row in rows
        if values.get(row.key) is not None
    ]


def evaluations(findings: dict[str, Any]) -> list:
    import highdicom as hd

    present = PRESENT if findings["pneumothorax"] else ABSENT
    items = [hd.sr.QualitativeEvaluation(code(PNEUMOTHORAX), code(present))]
    for key, name in CLASS_EVALUATIONS:
        if findings.get(key) in SIZE:
            items.append(hd.sr.QualitativeEvaluation(code(name), code(SIZE[findings[key]])))
    return items


@dataclass
class Region:
    """One connected region of the mask: its outline (closed, (column, row) image coordinates of
    pixel centres), its pixel count and the side (patient's terms) its centroid lies on."""

    outline: np.ndarray
    pixels: int
    side: str


def regions(mask: np.ndarray, limit: int = MAX_REGIONS) -> list[Region]:
    """The `limit` largest 8-connected regions of a bool mask, largest first."""
    import cv2

    mask8 = np.ascontiguousarray(mask, dtype=np.uint8)
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(mask8, connectivity=8)
    order = sorted(range(1, count), key=lambda i: -int(stats[i, cv2.CC_STAT_AREA]))[:limit]
    found = []
    for index in order:
        component = (labels == index).astype(np.uint8)
        contours, _ = cv2.findContours(component, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        contour = max(contours, key=len)
        points = cv2.approxPolyDP(contour, OUTLINE_TOLERANCE_PX, closed=True).reshape(-1, 2)
        if len(points) < 3:  # a line or a dot: outline the pixels' box instead
            x, y, w, h = (int(v) for v in stats[index, :4])
            points = np.array([[x, y], [x + w - 1, y], [x + w - 1, y + h - 1], [x, y + h - 1]])
        outline = points.astype(np.float32) + 0.5  # pixel centres; (0, 0) is a pixel's corner
        outline = np.vstack([outline, outline[:1]])  # a closed polyline ends where it starts
        side = "right" if centroids[index][0] < mask.shape[1] / 2 else "left"
        found.append(Region(outline, int(stats[index, cv2.CC_STAT_AREA]), side))
    return found


def _mask_of(segmentation) -> np.ndarray:
    pixels = np.asarray(segmentation.pixel_array, bool)
    return pixels.reshape(int(segmentation.Rows), int(segmentation.Columns))


def _region_values(region: Region, findings: dict[str, Any]) -> dict[str, Any]:
    """The area of one region and the size estimates of its side, as findings keys."""
    values: dict[str, Any] = {}
    area_px, area_cm2 = findings.get("area_px"), findings.get("area_cm2")
    if area_px and area_cm2 is not None:
        values["area_cm2"] = round(area_cm2 * region.pixels / area_px, 3)
    by_side = findings.get("size_est_by_side") or {}
    values.update(by_side.get(region.side) or {})
    return values


def _segment_reference(segmentation, ds):
    """The SEG's segment 1 as TID 1410 references it: its only frame, without a segment number.

    A SEG frame belongs to one segment, so the frame says which; the standard does not allow
    Referenced Segment Number beside Referenced Frame Number."""
    import highdicom as hd

    reference = hd.sr.ReferencedSegmentationFrame(
        sop_class_uid=segmentation.SOPClassUID,
        sop_instance_uid=segmentation.SOPInstanceUID,
        frame_number=1,
        segment_number=1,
        source_image=hd.sr.SourceImageForSegmentation(ds.SOPClassUID, ds.SOPInstanceUID),
    )
    for item in reference:
        for ref in item.get("ReferencedSOPSequence", []):
            if "ReferencedFrameNumber" in ref and "ReferencedSegmentNumber" in ref:
                del ref.ReferencedSegmentNumber
    return reference


@dataclass
class _Context:
    """What every group of one report shares."""

    ds: Any
    algorithm: Any
    finding_uid: str
    sop_uid: str
    laterality: tuple[str, str, str] | None


def _tracking(identifier: str, uid: str):
    import highdicom as hd

    return hd.sr.TrackingIdentifier(uid=uid, identifier=identifier)


def _sites(laterality):
    import highdicom as hd

    if not laterality:
        return None
    return [hd.sr.FindingSite(anatomic_location=code(PLEURA), laterality=code(laterality))]


def image_group(ctx: _Context, findings: dict[str, Any]):
    import highdicom as hd

    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking("Pneumothorax", ctx.finding_uid),
        finding_type=code(PNEUMOTHORAX),
        algorithm_id=ctx.algorithm,
        finding_sites=_sites(ctx.laterality),
        measurements=measurements(findings, laterality=ctx.laterality),
        qualitative_evaluations=evaluations(findings),
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ctx.ds)],
    )


def region_groups(ctx: _Context, findings: dict[str, Any], mask: np.ndarray) -> list:
    """One TID 1410 group per region: the outline on the source image, area and estimates."""
    import highdicom as hd

    groups = []
    for number, region in enumerate(regions(mask), start=1):
        side = SIDES[region.side] if findings.get("side") else None
        uid = ctx.finding_uid if number == 1 else derived_uid(ctx.sop_uid, "region", number)
        label = f"Pneumothorax region {number}" + (f" ({region.side})" if side else "")
        values = _region_values(region, findings)
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=_tracking(label, uid),
                referenced_region=hd.sr.ImageRegion(
                    graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                    graphic_data=region.outline,
                    source_image=hd.sr.SourceImageForRegion(
                        ctx.ds.SOPClassUID, ctx.ds.SOPInstanceUID
                    ),
                ),
                finding_type=code(PNEUMOTHORAX),
                algorithm_id=ctx.algorithm,
                finding_sites=_sites(side),
                measurements=measurements(values, (AREA_MEASUREMENT, *SIDE_MEASUREMENTS), side)
                or None,
            )
        )
    return groups


def segment_group(ctx: _Context, findings: dict[str, Any], segmentation):
    import highdicom as hd

    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking("Pneumothorax segment", ctx.finding_uid),
        referenced_segment=_segment_reference(segmentation, ctx.ds),
        finding_type=code(PNEUMOTHORAX),
        algorithm_id=ctx.algorithm,
        finding_sites=_sites(ctx.laterality),
        measurements=measurements(findings, (AREA_MEASUREMENT,)) or None,
    )


def _algorithm(model: str, findings: dict[str, Any]):
    import highdicom as hd

    from ptxseg import __version__

    return hd.sr.AlgorithmIdentification(
        name="ptxseg",
        version=__version__,
        parameters=[
            f"model: {model}",
            describe_operating_point(findings.get("operating_point")),
            f"operating point name: {findings.get('operating_point_name') or 'default'}",
        ],
    )


def _observer(model: str):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from ptxseg import __version__

    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid("ptxseg-device", model, __version__),
            name="ptxseg",
            manufacturer_name="ptxseg",
            model_name=model[:64],
        ),
    )


def library_image(ds):
    """The source as the Image Library (TID 1600) describes it.

    highdicom writes the projection descriptors of TID 1603 (patient orientation, imager pixel
    spacing) for CR and DX images and needs both; where the source lacks them, the entry names
    the image, its SOP class and its size only (the descriptors are optional in TID 1603)."""
    from pydicom import Dataset

    orientation = list(ds.get("PatientOrientation") or [])
    if len(orientation) == 2 and ds.get("ImagerPixelSpacing"):
        return ds
    entry = Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "Rows", "Columns"):
        setattr(entry, keyword, ds.get(keyword))
    entry.Modality = "OT"  # read by highdicom to choose the descriptors, never written
    return entry


def build_report(
    source,
    findings: dict[str, Any],
    *,
    segmentation=None,
    mask: np.ndarray | None = None,
    model_name: str | None = None,
    result_key: str = "",
    series_uid: str | None = None,
    sop_uid: str | None = None,
):
    """(highdicom ComprehensiveSR, notes) for one image's findings.

    `source` is the DICOM path or pydicom Dataset the findings are about (not modified);
    `mask` the bool mask at the source's size that the findings describe (its regions are
    outlined; taken from `segmentation` when not given); `segmentation` the SEG made from the same
    findings, referenced by a planar ROI group. The UIDs are derived from the source image, the
    ptxseg version and `result_key` unless given.
    """
    import highdicom as hd

    ds, notes, _label = repaired_source(source, stacklevel=4)
    model = model_description(findings, model_name)
    default_series, default_sop = report_uids(ds.SOPInstanceUID, result_key)
    positive = bool(findings["pneumothorax"])
    ctx = _Context(
        ds=ds,
        algorithm=_algorithm(model, findings),
        finding_uid=derived_uid(default_sop, "tracking"),
        sop_uid=default_sop,
        laterality=SIDES.get(findings.get("side") or "") if positive else None,
    )
    if mask is None and segmentation is not None:
        mask = _mask_of(segmentation)
    groups = [image_group(ctx, findings)]
    if positive and mask is not None and mask.any():
        groups += region_groups(ctx, findings, np.asarray(mask, bool))
    evidence = [ds]
    if segmentation is not None:
        groups.append(segment_group(ctx, findings, segmentation))
        evidence.append(segmentation)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=_observer(model)),
        procedure_reported=code(CHEST_IMAGING),
        imaging_measurements=groups,
        referenced_images=[library_image(ds)],
    )
    sr = _comprehensive_sr(
        evidence, report, series_uid or default_series, sop_uid or default_sop, model
    )
    return sr, notes


def _comprehensive_sr(evidence, report, series_uid: str, sop_uid: str, model: str):
    """The ComprehensiveSR document around a measurement report: ptxseg's series, research
    use, not verified."""
    import highdicom as hd

    from ptxseg import __version__

    sr = hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=report,
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer="ptxseg",
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=SERIES_DESCRIPTION,
        manufacturer_model_name=model[:64],
        software_versions=__version__,
        content_qualification=hd.ContentQualificationValues.RESEARCH,
        specific_character_set=CHARACTER_SET,
        coding_schemes=[
            hd.coding_schemes.CodingSchemeIdentificationItem(
                designator=LOCAL_SCHEME,
                name="ptxseg local codes",
                responsible_organization="ptxseg",
            )
        ],
    )
    return sr


def write_report(
    source_path: str | Path,
    findings: dict[str, Any],
    out: str | Path,
    segmentation=None,
    model_name: str | None = None,
    mask: np.ndarray | None = None,
) -> Path:
    """Write the SR of one image's findings to `out` (atomically); header repairs as `sr_notes`
    and with the image's `header_warnings`."""
    sr, notes = build_report(
        source_path, findings, segmentation=segmentation, mask=mask, model_name=model_name
    )
    buf = io.BytesIO()
    sr.save_as(buf)
    path = atomic.write_bytes(out, buf.getvalue())
    if notes:
        findings["sr_notes"] = notes
        list_with_header_warnings(findings, notes)
    return path


def _numeric_values(group) -> dict[str, float]:
    """The group's measurements by findings key (a Numeric row matches concept and site)."""
    values = {}
    for item in group.get_measurements():
        sites = {site.value.value for site in item.finding_sites}
        for row in IMAGE_MEASUREMENTS:
            if item.name.value == row.concept[0] and (row.site is None or row.site[0] in sites):
                values[row.key] = item.value
    return values


def _side_of(group) -> str | None:
    sites = group.finding_sites
    return sites[0].laterality.meaning.lower() if sites and sites[0].laterality else None


def read_report(source) -> dict[str, Any]:
    """The content of a report written by `build_report` (path, bytes or Dataset), as a dict.

    Keys: pneumothorax (bool), side, every `IMAGE_MEASUREMENTS` key (probability, area_cm2,
    bts_rim_mm_est, accp_apex_mm_est), bts_class_est, accp_class_est, algorithm_version,
    algorithm_parameters, source_sop_instance_uid, segmentation_sop_instance_uid (None without a
    SEG), finding_tracking_uid, and regions: per outlined region its tracking_uid, side, area_cm2,
    estimates and outline (N x 2 (column, row) points, closed).
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
    qualitative = {
        item.name.value: item.value.meaning.lower() for item in group.get_qualitative_evaluations()
    }

    def texts(name) -> list[str]:
        found = find_content_items(group[0], name=name, recursive=True)
        return list(dict.fromkeys(item.TextValue for item in found))

    rois = report.get_planar_roi_measurement_groups()
    outlined = [roi for roi in rois if roi.roi is not None]
    segments = [roi for roi in rois if roi.referenced_segmentation_frame is not None]
    result = {key: None for key in (row.key for row in IMAGE_MEASUREMENTS)}
    result.update(_numeric_values(group))
    result.update(
        pneumothorax=qualitative.get(PNEUMOTHORAX[0]) == "present",
        side=_side_of(group),
        bts_class_est=qualitative.get(BTS_CLASS[0]),
        accp_class_est=qualitative.get(ACCP_CLASS[0]),
        algorithm_version=next(iter(texts(codes.DCM.AlgorithmVersion)), None),
        algorithm_parameters=texts(codes.DCM.AlgorithmParameters),
        source_sop_instance_uid=group.source_images[0].referenced_sop_instance_uid,
        segmentation_sop_instance_uid=(
            segments[0].referenced_segmentation_frame[0].referenced_sop_instance_uid
            if segments
            else None
        ),
        finding_tracking_uid=group.tracking_uid,
        regions=[
            {
                "tracking_uid": roi.tracking_uid,
                "side": _side_of(roi),
                "outline": np.asarray(roi.roi.value, float),
                **{"area_cm2": None, "bts_rim_mm_est": None, "accp_apex_mm_est": None},
                **_numeric_values(roi),
            }
            for roi in outlined
        ],
    )
    return result
