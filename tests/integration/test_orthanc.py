"""Round trips through a real Orthanc (marker `pacs`, `make test-pacs`): real SIIM stage-2 images
with repaired UIDs in; `ptxseg dicomweb` and `ptxseg listen` put SEG and SR beside them."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
import requests
from orthanc import restart_orthanc, start_orthanc, stop_orthanc
from pacs_helpers import free_port, read
from predict_helpers import make_checkpoint
from pydicom.uid import JPEGBaseline8Bit
from pynetdicom import AE
from pynetdicom.sop_class import SecondaryCaptureImageStorage, Verification

from ptxseg.cli import main
from ptxseg.data.uids import repair_file
from ptxseg.inference.sr import read_report
from ptxseg.integration import dicomweb as dw

pytestmark = pytest.mark.pacs
POSITIVE_OP = {"top": 0.0, "bottom": 0.0, "min_area": 0}  # every image positive: SEG and SR


@pytest.fixture
def orthanc(tmp_path):
    server = start_orthanc(tmp_path / "orthanc")
    yield server
    stop_orthanc(server)


def _repaired(siim_real, folder: Path, names=None) -> list[Path]:
    source = siim_real / "vishakhnair16-stage2-test"
    files = sorted(source.glob("ID_*.dcm"))
    files = [f for f in files if names is None or f.name in names]
    return [folder / f.name for f in files if repair_file(f, folder / f.name) is not None]


def _cli(args, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as done:
        main(args)
    captured = capsys.readouterr()
    return done.value.code or 0, captured.out + captured.err


def _check_results_reference_their_sources(orthanc, sources: dict[str, pydicom.Dataset]):
    """One SR per source, in the source's study, naming it; each SEG references its source and
    is the one its SR names."""
    reports = [read_report(blob) for blob in orthanc.by_modality("SR").values()]
    segs = [read(blob) for blob in orthanc.by_modality("SEG").values()]
    assert sorted(r["source_sop_instance_uid"] for r in reports) == sorted(sources)
    seg_source = {
        seg.SOPInstanceUID: seg.ReferencedSeriesSequence[0]
        .ReferencedInstanceSequence[0]
        .ReferencedSOPInstanceUID
        for seg in segs
    }
    for report in reports:
        assert (
            seg_source[report["segmentation_sop_instance_uid"]] == report["source_sop_instance_uid"]
        )
    for seg in segs:
        source = sources[seg_source[seg.SOPInstanceUID]]
        assert seg.StudyInstanceUID == source.StudyInstanceUID
    return reports, segs


def test_dicomweb_stores_seg_and_sr_beside_each_image_once(siim_real, orthanc, tmp_path, capsys):
    files = _repaired(siim_real, tmp_path / "repaired")
    for path in files:
        orthanc.upload(path)
    sources = {read(p.read_bytes()).SOPInstanceUID: read(p.read_bytes()) for p in files}
    ckpt = make_checkpoint(tmp_path / "m.ckpt", "resnet50", 64, POSITIVE_OP)
    args = ["dicomweb", "--url", orthanc.dicomweb, "-c", str(ckpt), "--new", "--batch-size", "4"]
    with pytest.MonkeyPatch.context() as env:
        for key, value in orthanc.env.items():
            env.setenv(key, value)
        code, out = _cli(args, capsys)
        assert code == 0, out
        assert "stored 10 SEG + 10 SR, 0 errors" in " ".join(out.split())
        reports, segs = _check_results_reference_their_sources(orthanc, sources)
        assert all(r["pneumothorax"] for r in reports) and len(segs) == 10
        count = len(orthanc.instance_ids())
        assert count == 30
        code, out = _cli(args, capsys)  # the rerun stores nothing
        assert code == 0 and "10 had a result, 0 analysed" in " ".join(out.split())
        assert len(orthanc.instance_ids()) == count


def test_the_original_stage2_file_is_refused_with_a_clear_reason(siim_real, orthanc):
    original = siim_real / "vishakhnair16-stage2-test" / "ID_0011fe81e.dcm"
    client = dw.make_client(orthanc.dicomweb, environ=orthanc.env)
    with pytest.raises(dw.StoreRefused) as refused:
        dw.store(client, [read(original.read_bytes())], "img-original")
    message = str(refused.value)
    assert "did not store CR" in message and "invalid StudyInstanceUID" in message
    assert "ptxseg repair-uids" in message and orthanc.instance_ids() == []


def test_wrong_credentials_are_reported(orthanc, tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "m.ckpt", "resnet50", 64, POSITIVE_OP)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PTXSEG_DICOMWEB_USER", "ptxseg")
        env.setenv("PTXSEG_DICOMWEB_PASSWORD", "wrong")
        code, out = _cli(["dicomweb", "--url", orthanc.dicomweb, "-c", str(ckpt), "--new"], capsys)
    assert code == 2 and "HTTP 401" in out and "PTXSEG_DICOMWEB_USER" in out
    assert "wrong" not in out


def _echo(port: int, ae_title: str, calling: str = "PROBE") -> bool:
    ae = AE(calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    if not assoc.is_established:
        return False
    ok = int(assoc.send_c_echo().Status) == 0
    assoc.release()
    return ok


def _wait(condition, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_listen_receives_from_a_modality_and_from_orthanc_and_sends_back(siim_real, tmp_path):
    """`ptxseg listen` as its own process: one image pushed by a C-STORE SCU, one pushed by
    Orthanc itself; SEG and SR of both arrive in Orthanc."""
    listen_port = free_port()
    orthanc = start_orthanc(
        tmp_path / "orthanc", modalities={"ptxseg": ["PTXSEG", "127.0.0.1", listen_port]}
    )
    listener = None
    try:
        a, b = _repaired(siim_real, tmp_path / "repaired", {"ID_0011fe81e.dcm", "ID_004d6fbb6.dcm"})
        txv = next((siim_real / "torchxrayvision").glob("1.2.276*.dcm"))  # has a patient id
        ckpt = make_checkpoint(tmp_path / "m.ckpt", "resnet50", 64, POSITIVE_OP)
        log = tmp_path / "listen.log"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path("src").resolve()), *sys.path]))
        command = [sys.executable, "-m", "ptxseg", "listen", "-c", str(ckpt), "--port",
                   str(listen_port), "--ae-title", "PTXSEG", "--send-to",
                   f"ORTHANC@127.0.0.1:{orthanc.dicom_port}", "--spool", str(tmp_path / "spool"),
                   "--accept-secondary-capture"]  # SIIM's files are Secondary Capture  # fmt: skip
        with open(log, "wb") as sink:
            listener = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
        _wait(lambda: _echo(listen_port, "PTXSEG"), 120, "the listener's C-ECHO")

        scu = AE("MODALITY")
        scu.add_requested_context(SecondaryCaptureImageStorage, [JPEGBaseline8Bit])
        assoc = scu.associate("127.0.0.1", listen_port, ae_title="PTXSEG")
        try:
            statuses = [int(assoc.send_c_store(read(p.read_bytes())).Status) for p in (a, txv)]
        finally:
            assoc.release()
        assert statuses == [0, 0]
        pushed = orthanc.upload(b)  # Orthanc holds it and pushes it to the listener
        orthanc.post("/modalities/ptxseg/store", pushed)

        _wait(lambda: len(orthanc.by_modality("SR")) == 3, 120, "three SRs in Orthanc")
        sources = {read(p.read_bytes()).SOPInstanceUID: read(p.read_bytes()) for p in (a, b, txv)}
        reports, segs = _check_results_reference_their_sources(orthanc, sources)
        assert len(segs) == 3
        count = len(orthanc.instance_ids())
        orthanc.post("/modalities/ptxseg/store", pushed)  # again: the same SEG and SR UIDs
        _wait(lambda: log.read_text().count("sent to ORTHANC") == 4, 120, "the fourth sending")
        assert len(orthanc.instance_ids()) == count
    finally:
        try:
            if listener is not None:
                listener.send_signal(signal.SIGINT)
                try:
                    listener.wait(60)
                except subprocess.TimeoutExpired:
                    listener.kill()
                    listener.wait(10)
        finally:
            stop_orthanc(orthanc)
    out = log.read_text()
    assert "received 4, refused 0, analysed 4, sent 4, failed 0" in " ".join(out.split())
    patient = read(txv.read_bytes())
    assert str(patient.PatientID) not in out and str(patient.SOPInstanceUID) not in out


def _outside_address() -> str | None:
    """This machine's address on its first non-loopback interface (no packet is sent)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


def test_the_test_orthanc_is_reachable_only_on_loopback(orthanc):
    """In its own network namespace, nothing answers at the machine's other address; without
    one, Orthanc answers there but refuses HTTP (remote access off)."""
    import socket

    address = _outside_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to try")
    assert orthanc.get("/system").json()["DicomAet"] == "ORTHANC"
    if orthanc.isolated:
        here = os.readlink("/proc/self/ns/net")
        assert os.readlink(f"/proc/{orthanc.process.pid}/ns/net") != here
        for port in (orthanc.http_port, orthanc.dicom_port):
            with (
                pytest.raises(ConnectionRefusedError),
                socket.create_connection((address, port), timeout=5),
            ):
                pass
    else:
        answer = requests.get(f"http://{address}:{orthanc.http_port}/system", timeout=10)
        assert answer.status_code in (401, 403)


def test_orthanc_takes_dimse_only_from_registered_modalities_at_127_0_0_1(tmp_path):
    orthanc = start_orthanc(
        tmp_path / "orthanc",
        modalities={
            "ptxseg": ["PTXSEG", "127.0.0.1", free_port()],
            "elsewhere": ["FARAWAY", "10.11.12.13", 104],
        },
    )
    try:
        assert _echo(orthanc.dicom_port, "ORTHANC", calling="PTXSEG")
        assert not _echo(orthanc.dicom_port, "ORTHANC", calling="STRANGER")
        assert not _echo(orthanc.dicom_port, "ORTHANC", calling="FARAWAY")  # wrong address
    finally:
        stop_orthanc(orthanc)


def test_dicomweb_says_in_one_line_when_the_pacs_goes_away_and_a_rerun_finishes(
    orthanc, tmp_path, capsys
):
    from pacs_helpers import cr_file

    files = [cr_file(tmp_path / f"in-{i}.dcm", seed=i) for i in range(12)]
    for path in files:
        orthanc.upload(path)
    ckpt = make_checkpoint(tmp_path / "m.ckpt", "resnet18", 64, POSITIVE_OP)
    args = ["dicomweb", "--url", orthanc.dicomweb, "-c", str(ckpt), "--new", "--batch-size", "1"]
    env = dict(os.environ, **orthanc.env,
               PYTHONPATH=os.pathsep.join([str(Path("src").resolve()), *sys.path]))  # fmt: skip
    log = tmp_path / "dicomweb.log"
    with open(log, "wb") as sink:
        run = subprocess.Popen([sys.executable, "-m", "ptxseg", *args], stdout=sink,
                               stderr=subprocess.STDOUT, env=env)  # fmt: skip
    try:
        _wait(lambda: log.read_text().count("SEG + SR") >= 2, 120, "the first stored results")
        stop_orthanc(orthanc)
        code = run.wait(120)
    finally:
        if run.poll() is None:
            run.kill()
    out = log.read_text()
    errors = [line for line in out.splitlines() if "error" in line.lower()]
    assert code == 1, out
    assert len(errors) == 1 and "Traceback" not in out, out
    assert "cannot reach the DICOMweb server" in errors[0] and "run the same command" in errors[0]
    server = restart_orthanc(orthanc)
    try:
        with pytest.MonkeyPatch.context() as patch:
            for key, value in orthanc.env.items():
                patch.setenv(key, value)
            code, out = _cli(args, capsys)
        assert code == 0, out
        assert len(server.by_modality("SR")) == 12
    finally:
        stop_orthanc(server)
