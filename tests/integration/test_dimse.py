"""`ptxseg listen` in-process: C-STORE in, SEG and SR out to a pynetdicom destination, C-ECHO,
failures logged without identifiers, the bounded queue."""

import threading
import time

import pytest
from pacs_helpers import NEGATIVE_OP, analyzer, cr_file, free_port, read
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    ComprehensiveSRStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
    Verification,
)

from ptxseg.inference.sr import read_report
from ptxseg.integration.dimse import (
    OUT_OF_RESOURCES,
    Destination,
    Listener,
    parse_destination,
    send,
)


class Receiver:
    """A destination AE that keeps what it is sent."""

    def __init__(self, ae_title="DEST"):
        self.ae_title, self.port, self.received = ae_title, free_port(), []
        ae = AE(ae_title)
        for sop_class in (SegmentationStorage, ComprehensiveSRStorage):
            ae.add_supported_context(sop_class)
        self.server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self.store)],
        )

    def store(self, event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        self.received.append(ds)
        return 0x0000

    @property
    def destination(self):
        return Destination(self.ae_title, "127.0.0.1", self.port)


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()


def push(port, files, ae_title="PTXSEG"):
    """C-STORE the files to the listener as a modality would; the statuses."""
    ae = AE("MODALITY")
    ae.add_requested_context(SecondaryCaptureImageStorage)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(read(path.read_bytes())).Status) for path in files]
    echo = int(assoc.send_c_echo().Status)
    assoc.release()
    return statuses, echo


def wait_for(condition, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_images_in_seg_and_sr_out_and_a_bad_image_blocks_nothing(tmp_path, receiver):
    good = cr_file(tmp_path / "good.dcm", seed=1)
    bad_ds = read(cr_file(tmp_path / "bad.dcm", PatientName="Roe^Richard").read_bytes())
    bad_ds.PixelData = b"\x00" * 10
    bad = tmp_path / "bad2.dcm"
    bad_ds.save_as(bad, enforce_file_format=True)
    ct = cr_file(tmp_path / "ct.dcm", Modality="CT")
    after = cr_file(tmp_path / "after.dcm", seed=2)
    port, lines = free_port(), []
    listener = Listener(
        analyzer(), receiver.destination, port=port, report=lines.append, batch_size=1
    )
    with listener:
        statuses, echo = push(port, [good, bad, ct, after])
        assert statuses == [0, 0, 0, 0] and echo == 0
        assert wait_for(lambda: listener.stats.sent + listener.stats.failed >= 3)
    stats = listener.stats
    assert (stats.received, stats.ignored, stats.sent, stats.failed) == (4, 1, 2, 1)
    kinds = sorted(str(ds.Modality) for ds in receiver.received)
    assert kinds == ["SEG", "SEG", "SR", "SR"]
    sources = {read(p.read_bytes()).SOPInstanceUID for p in (good, after)}
    reports = [read_report(ds) for ds in receiver.received if ds.Modality == "SR"]
    assert {r["source_sop_instance_uid"] for r in reports} == sources
    failed = [line for line in lines if "failed" in line]
    assert len(failed) == 1
    for secret in ("Roe", "PID-4711", bad_ds.SOPInstanceUID, bad_ds.StudyInstanceUID):
        assert all(secret not in line for line in lines)


def test_negative_images_send_an_sr_only(tmp_path, receiver):
    port = free_port()
    with Listener(analyzer(NEGATIVE_OP), receiver.destination, port=port, report=lambda x: None):
        push(port, [cr_file(tmp_path / "a.dcm")])
        assert wait_for(lambda: len(receiver.received) == 1)
    assert receiver.received[0].Modality == "SR"


def test_an_unreachable_destination_is_logged_and_the_listener_goes_on(tmp_path):
    port, lines = free_port(), []
    nowhere = Destination("NOWHERE", "127.0.0.1", free_port())
    with Listener(analyzer(), nowhere, port=port, report=lines.append) as listener:
        push(port, [cr_file(tmp_path / "a.dcm"), cr_file(tmp_path / "b.dcm", seed=3)])
        assert wait_for(lambda: listener.stats.failed == 2)
    assert all("analysed but not sent" in line and "NOWHERE" in line for line in lines)


def test_a_full_queue_refuses_with_out_of_resources(tmp_path, receiver):
    gate = threading.Event()

    def slow_sender(datasets, destination, calling_ae):
        gate.wait(30)
        send(datasets, destination, calling_ae)

    port = free_port()
    listener = Listener(
        analyzer(),
        receiver.destination,
        port=port,
        queue_size=1,
        batch_size=1,
        enqueue_timeout=0.2,
        report=lambda x: None,
        sender=slow_sender,
    )
    files = [cr_file(tmp_path / f"{i}.dcm", seed=i) for i in range(4)]
    with listener:
        statuses, _ = push(port, files)
        gate.set()
        assert wait_for(lambda: listener.stats.sent == statuses.count(0))
    assert OUT_OF_RESOURCES in statuses and statuses[0] == 0
    assert listener.stats.refused == statuses.count(OUT_OF_RESOURCES)


def test_the_listener_answers_only_its_own_ae_title(receiver):
    port = free_port()
    with Listener(analyzer(), receiver.destination, port=port, report=lambda x: None):
        ae = AE("MODALITY")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title="SOMEONE")
        assert not assoc.is_established


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ORTHANC@127.0.0.1:4242", Destination("ORTHANC", "127.0.0.1", 4242)),
        ("PACS@pacs.example.org:104", Destination("PACS", "pacs.example.org", 104)),
        ("A@[::1]:11112", Destination("A", "::1", 11112)),
    ],
)
def test_destinations_parse(text, expected):
    assert parse_destination(text) == expected


@pytest.mark.parametrize(
    "text", ["ORTHANC", "ORTHANC@host", "@host:1", "A@host:0", "WAY_TOO_LONG_AE_TITLE@h:1"]
)
def test_bad_destinations_say_what_is_expected(text):
    with pytest.raises(ValueError, match="--send-to"):
        parse_destination(text)
