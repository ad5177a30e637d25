"""Shared pieces of the PACS tests: small CR files, an Analyzer on RegionModel, a fake DICOMweb
server in memory, a DIMSE destination that keeps what it gets, and free TCP ports."""

from __future__ import annotations

import io
import socket
import warnings
from pathlib import Path

import pydicom
from dicom_files import chest_like, write_dicom
from predict_helpers import RegionModel
from pydicom.dataset import Dataset

from ptxseg.inference.predictor import Predictor
from ptxseg.integration.analysis import Analyzer

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
NEGATIVE_OP = {"top": 0.99999, "bottom": 0.5, "min_area": 1}  # RegionModel's 0.9997 never passes


def analyzer(operating_point=None, key: str = "test-key") -> Analyzer:
    predictor = Predictor(RegionModel(), operating_point=operating_point)
    return Analyzer(predictor, "RegionModel test", key)


def cr_file(path: Path, seed: int = 0, sop_class: str = CR_IMAGE_STORAGE, **tags) -> Path:
    """A 64x64 CR image (CR Image Storage SOP class unless `sop_class` says otherwise) with valid
    UIDs and a patient name (to check that logs leave it out)."""
    tags = {"PatientName": "Doe^Jane", "PatientID": "PID-4711", **tags}
    write_dicom(path, chest_like(64, seed), **tags)
    ds = pydicom.dcmread(path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.save_as(path, enforce_file_format=True)
    return path


def cr_blob(tmp_path: Path, name: str = "cr.dcm", **tags) -> bytes:
    return cr_file(tmp_path / name, **tags).read_bytes()


def read(blob: bytes) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(blob))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _json(ds: Dataset) -> dict:
    items = {
        "0020000D": ("UI", ds.StudyInstanceUID),
        "0020000E": ("UI", ds.SeriesInstanceUID),
        "00080018": ("UI", ds.SOPInstanceUID),
        "00080060": ("CS", ds.Modality),
    }
    return {tag: {"vr": vr, "Value": [value]} for tag, (vr, value) in items.items()}


class FakeDicomweb:
    """The four dicomweb-client calls ptxseg makes, on a dict of datasets.

    `refuse` is a set of modalities whose STOW the fake drops from its answer (as Orthanc does for
    objects it refuses); `page_size` caps every QIDO answer, `ignore_offset` repeats page one.
    """

    def __init__(self, datasets=(), refuse=(), page_size=None, ignore_offset=False):
        self.instances = {str(ds.SOPInstanceUID): ds for ds in datasets}
        self.refuse, self.page_size, self.ignore_offset = set(refuse), page_size, ignore_offset
        self.stored: list[Dataset] = []
        self.calls: list[str] = []

    def _page(self, items, limit, offset):
        offset = 0 if self.ignore_offset else (offset or 0)
        cap = min(x for x in (limit, self.page_size, 10**9) if x)
        return items[offset : offset + cap]

    def search_for_studies(self, search_filters=None, limit=None, offset=None, **_):
        self.calls.append("qido-studies")
        wanted = (search_filters or {}).get("ModalitiesInStudy")
        studies = {}
        for ds in self.instances.values():
            if wanted is None or ds.Modality == wanted:
                studies[ds.StudyInstanceUID] = {
                    "0020000D": {"vr": "UI", "Value": [ds.StudyInstanceUID]}
                }
        return self._page(list(studies.values()), limit, offset)

    def search_for_instances(self, study_instance_uid=None, limit=None, offset=None, **_):
        self.calls.append("qido-instances")
        found = [
            _json(ds)
            for ds in self.instances.values()
            if study_instance_uid in (None, ds.StudyInstanceUID)
        ]
        return self._page(found, limit, offset)

    def retrieve_instance(self, study, series, sop, **_):
        self.calls.append("wado")
        return self.instances[sop]

    def store_instances(self, datasets, **_):
        self.calls.append("stow")
        answer = Dataset()
        answer.ReferencedSOPSequence = []
        answer.FailedSOPSequence = []
        for ds in datasets:
            item = Dataset()
            item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = (
                ds.SOPClassUID,
                ds.SOPInstanceUID,
            )
            if ds.Modality in self.refuse:
                item.FailureReason = 0xC000
                answer.FailedSOPSequence.append(item)
                continue
            self.instances[str(ds.SOPInstanceUID)] = ds
            self.stored.append(ds)
            answer.ReferencedSOPSequence.append(item)
        return answer
