"""Every kind of DICOM output passes dciodvfy with 0 errors (marker `conformance`,
`make test-conformance`): `predict --seg --sr`, serve's /v1/seg, `dicomweb`, `listen` and
`repair-uids`' copies, on synthetic inputs, names in other scripts and the real SIIM files.

dicomweb and listen run their real code paths in-process: a DICOMweb server in memory keeps what
STOW-RS sent, a pynetdicom SCP keeps what C-STORE sent. Every warning left must be one of
`dciodvfy.KNOWN_WARNINGS` (each with its reason, listed in docs/conformance.md too).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import pydicom
import pytest
from conftest import SIIM_REAL
from dciodvfy import Verdict, require, summary, validate
from dicom_files import chest_like, write_dicom
from pacs_helpers import NEGATIVE_OP, FakeDicomweb, analyzer, free_port, read
from predict_helpers import RegionModel, make_checkpoint
from pydicom.uid import JPEGBaseline8Bit
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    ComprehensiveSRStorage,
    ComputedRadiographyImageStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)
from serve_helpers import local_client

from ptxseg.cli import main
from ptxseg.data.uids import repair_file

pytestmark = pytest.mark.conformance
POSITIVE_OP = {"top": 0.0, "bottom": 0.0, "min_area": 0}  # random weights: every image positive
NAMES = {"ISO_IR 192": "山田^太郎", "ISO_IR 144": "Иванов^Иван", "ISO_IR 100": "Müller^Jürgen"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, list[Path]]:
    """Synthetic radiographs, names in other scripts, and the real SIIM files when present."""
    from ptxseg.data import synthetic

    require()
    root = tmp_path_factory.mktemp("inputs")
    synthetic.generate_dataset(root / "synth", 4, size=64, seed=3, positive_fraction=0.5)
    found = {"synthetic": sorted((root / "synth").rglob("*.dcm"))}
    found["names"] = [
        write_dicom(
            root / f"name-{i}.dcm",
            chest_like(64, i),
            SpecificCharacterSet=charset,
            PatientName=name,
        )
        for i, (charset, name) in enumerate(NAMES.items())
    ]
    found["real"] = sorted(SIIM_REAL.glob("vishakhnair16-stage2-test/*.dcm")) + sorted(
        SIIM_REAL.glob("torchxrayvision/*.dcm")
    )
    return found


def _all(inputs) -> list[Path]:
    return [path for group in inputs.values() for path in group]


def _sample(inputs) -> list[Path]:
    """For the network paths (the same Analyzer builds both): every synthetic and named input,
    two real stage-2 files and one stage-1 file; predict and serve take them all."""
    real = inputs["real"]
    return inputs["synthetic"] + inputs["names"] + real[:2] + real[-1:]


def _check(verdicts: list[Verdict], expected: int, what: str) -> None:
    print(f"{what}: {summary(verdicts)}")
    assert len(verdicts) == expected, f"{what}: {len(verdicts)} files, expected {expected}"
    for verdict in verdicts:
        assert verdict.errors == [], f"{verdict.path}: {verdict.errors}"
        assert verdict.unknown_warnings == [], f"{verdict.path}: {verdict.unknown_warnings}"


def _save(datasets, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, ds in enumerate(datasets):
        path = folder / f"{index:03d}-{ds.Modality}.dcm"
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        path.write_bytes(buffer.getvalue())
        paths.append(path)
    return paths


def _repaired(inputs, folder: Path) -> list[Path]:
    """Copies that a PACS accepts (the real stage-2 files have empty Study/Series UIDs)."""
    folder.mkdir(parents=True, exist_ok=True)
    return [path if repair_file(path, folder / path.name) is None else folder / path.name
            for path in dict.fromkeys(_sample(inputs))]  # fmt: skip


def _names_intact(paths: list[Path]) -> None:
    names = {str(read(p.read_bytes()).PatientName) for p in paths}
    assert set(NAMES.values()) <= names
    assert {read(p.read_bytes()).SpecificCharacterSet for p in paths} == {"ISO_IR 192"}


def test_predict_writes_valid_seg_and_sr(inputs, tmp_path, capsys):
    files = _all(inputs)
    for op, kinds in ((POSITIVE_OP, ("seg", "sr")), (NEGATIVE_OP, ("sr",))):
        ckpt = make_checkpoint(tmp_path / "m.ckpt", "resnet50", 64, op)
        out = tmp_path / f"out-{len(kinds)}"
        with pytest.raises(SystemExit) as done:
            main(["predict", *map(str, files), "-c", str(ckpt), "-o", str(out), "--seg", "--sr"])
        assert (done.value.code or 0) == 0, capsys.readouterr().err
        for kind in kinds:
            written = sorted((out / kind).glob("*.dcm"))
            _check([validate(p) for p in written], len(files), f"predict {kind} ({op})")
            _names_intact(written)


def test_serve_seg_endpoint_answers_valid_segs(inputs, tmp_path):
    from ptxseg.inference.predictor import Predictor
    from ptxseg.serving.render import DefaultRenderer
    from ptxseg.serving.webapp import ServeSettings, create_app

    predictor = Predictor(RegionModel(), operating_point={"top": 0.5, "bottom": 0.5, "min_area": 1})
    client = local_client(create_app(predictor, ServeSettings(), renderer=DefaultRenderer()))
    segs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in _all(inputs):
            answer = client.post("/v1/seg", content=path.read_bytes())
            assert answer.status_code == 200, answer.text
            segs.append(read(answer.content))
    paths = _save(segs, tmp_path / "served")
    _check([validate(p) for p in paths], len(segs), "serve /v1/seg")
    _names_intact(paths)


def test_dicomweb_stores_valid_seg_and_sr(inputs, tmp_path):
    from ptxseg.integration import dicomweb as dw

    copies = _repaired(inputs, tmp_path / "repaired")
    stored = []
    for op in (None, NEGATIVE_OP):
        pacs = FakeDicomweb([read(p.read_bytes()) for p in copies])
        summary_ = dw.run_pass(pacs, analyzer(op, key=f"{op}"), report=lambda line: None)
        assert summary_.errors == []
        stored += pacs.stored
    paths = _save(stored, tmp_path / "stored")
    segs = [p for p in paths if p.name.endswith("SEG.dcm")]
    images = len({str(read(p.read_bytes()).SOPInstanceUID) for p in copies})  # one is a copy
    assert len(segs) == images  # the first pass finds every image positive
    _check([validate(p) for p in paths], 3 * images, "dicomweb SEG + SR")
    _names_intact(segs)


class _Receiver:
    """A destination AE that keeps what `listen` sends it."""

    def __init__(self):
        self.port, self.received = free_port(), []
        ae = AE("DEST")
        for sop_class in (SegmentationStorage, ComprehensiveSRStorage):
            ae.add_supported_context(sop_class)
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self.store)]
        )

    def store(self, event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        self.received.append(ds)
        return 0x0000


def test_listen_sends_valid_seg_and_sr(inputs, tmp_path):
    import time

    from ptxseg.integration.dimse import Destination, Listener, ListenerSettings
    from ptxseg.integration.spool import Spool

    copies = _repaired(inputs, tmp_path / "repaired")
    receiver, port = _Receiver(), free_port()
    try:
        destination = Destination("DEST", "127.0.0.1", receiver.port)
        spool = Spool(tmp_path / "spool")
        listener = Listener(
            analyzer(),
            destination,
            spool,
            # SIIM's files are Secondary Capture with Modality CR
            ListenerSettings(port=port, secondary_capture=True),
            report=lambda line: None,
        )
        with spool, listener:
            scu = AE("MODALITY")
            for sop_class in (SecondaryCaptureImageStorage, ComputedRadiographyImageStorage):
                scu.add_requested_context(sop_class)
                scu.add_requested_context(sop_class, [JPEGBaseline8Bit])
            assoc = scu.associate("127.0.0.1", port, ae_title="PTXSEG")
            assert assoc.is_established
            statuses = [int(assoc.send_c_store(read(p.read_bytes())).Status) for p in copies]
            assoc.release()
            assert set(statuses) == {0}
            end = time.monotonic() + 300
            while len(receiver.received) < 2 * len(copies) and time.monotonic() < end:
                time.sleep(0.1)
    finally:
        receiver.server.shutdown()
    paths = _save(receiver.received, tmp_path / "received")
    _check([validate(p) for p in paths], 2 * len(copies), "listen SEG + SR")
    _names_intact([p for p in paths if p.name.endswith("SEG.dcm")])


def test_repair_uids_copies_are_valid(inputs, tmp_path, capsys):
    if not inputs["real"]:
        pytest.skip(f"real SIIM files not found at {SIIM_REAL}")
    folders = sorted({str(p.parent) for p in inputs["real"]})
    with pytest.raises(SystemExit) as done:
        main(["repair-uids", *folders, "--out", str(tmp_path / "copies")])
    assert (done.value.code or 0) == 0, capsys.readouterr().err
    copies = sorted((tmp_path / "copies").rglob("*.dcm"))
    originals = [validate(p) for p in inputs["real"]]
    print(f"the original SIIM files: {summary(originals)}")
    assert sum(bool(v.errors) for v in originals) == len(originals)  # each one has an error
    _check([validate(p) for p in copies], len(inputs["real"]), "repair-uids copies")
