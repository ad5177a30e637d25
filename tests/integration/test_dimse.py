"""`ptxseg listen` in-process: C-STORE into the spool, SEG and SR out to a pynetdicom destination
through the outbox, retries and their limit, refusals, restarts that drain the spool first."""

import dataclasses
import os
import stat
import threading
import time

import pytest
from pacs_helpers import NEGATIVE_OP, analyzer, cr_file, free_port, read
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    ComprehensiveSRStorage,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
    Verification,
)

from ptxseg.inference.sr import read_report
from ptxseg.integration.dimse import (
    NOT_A_CHEST_RADIOGRAPH,
    OUT_OF_RESOURCES,
    Destination,
    DestinationUnreachable,
    Listener,
    ListenerSettings,
    SendFailed,
    backoff,
    parse_destination,
    send,
)
from ptxseg.integration.spool import Spool


class Receiver:
    """A destination AE that keeps what it is sent; `refuse` answers C-STOREs with 0xA700."""

    def __init__(self, ae_title="DEST", port=None):
        self.ae_title, self.port, self.received = ae_title, port or free_port(), []
        self.refuse = False
        self.server = None
        self.start()

    def start(self):
        ae = AE(self.ae_title)
        for sop_class in (SegmentationStorage, ComprehensiveSRStorage):
            ae.add_supported_context(sop_class)
        self.server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self.store)],
        )

    def stop(self):
        self.server.shutdown()

    def store(self, event):
        if self.refuse:
            return 0xA700
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
    r.stop()


@pytest.fixture
def spool(tmp_path):
    with Spool(tmp_path / "spool") as opened:
        yield opened


def listener(spool, destination, **kwargs):
    kwargs.setdefault("port", free_port())
    kwargs.setdefault("report", lambda line: None)
    kwargs.setdefault("retry_base", 0.05)
    kwargs.setdefault("retry_cap", 0.2)
    fields = {f.name for f in dataclasses.fields(ListenerSettings)}
    settings = ListenerSettings(**{k: kwargs.pop(k) for k in list(kwargs) if k in fields})
    node = kwargs.pop("analyzer", None) or analyzer()
    return Listener(node, destination, spool, settings, **kwargs)


def push(port, files, ae_title="PTXSEG", sop_class=ComputedRadiographyImageStorage):
    """C-STORE the files to the listener as a modality would; the statuses and the C-ECHO's."""
    ae = AE("MODALITY")
    ae.add_requested_context(sop_class)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    assert assoc.is_established
    try:
        statuses = [int(assoc.send_c_store(read(path.read_bytes())).Status) for path in files]
        echo = int(assoc.send_c_echo().Status)
    finally:
        assoc.release()
    return statuses, echo


def wait_for(condition, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return False


def empty(spool):
    counts = spool.counts()
    return counts.queued == 0 and counts.pending == 0


def test_images_in_seg_and_sr_out_and_a_bad_image_goes_to_failed(tmp_path, spool, receiver):
    good = cr_file(tmp_path / "good.dcm", seed=1)
    bad_ds = read(cr_file(tmp_path / "bad.dcm", PatientName="Roe^Richard").read_bytes())
    bad_ds.PixelData = b"\x00" * 10
    bad = tmp_path / "bad2.dcm"
    bad_ds.save_as(bad, enforce_file_format=True)
    after = cr_file(tmp_path / "after.dcm", seed=2)
    lines = []
    with listener(spool, receiver.destination, report=lines.append, batch_size=1) as node:
        statuses, echo = push(node.port, [good, bad, after])
        assert statuses == [0, 0, 0] and echo == 0
        assert wait_for(lambda: empty(spool) and spool.counts().failed == 1)
    stats = node.stats
    assert (stats.received, stats.analysed, stats.sent, stats.failed) == (3, 2, 2, 1)
    assert sorted(str(ds.Modality) for ds in receiver.received) == ["SEG", "SEG", "SR", "SR"]
    sources = {read(p.read_bytes()).SOPInstanceUID for p in (good, after)}
    reports = [read_report(ds) for ds in receiver.received if ds.Modality == "SR"]
    assert {r["source_sop_instance_uid"] for r in reports} == sources
    [failed] = spool.failures()
    kept = read((spool.failed / failed / "instance.dcm").read_bytes())
    assert kept.SOPInstanceUID == bad_ds.SOPInstanceUID and kept.PixelData == bad_ds.PixelData
    assert "analysis failed" in spool.reason(failed)
    for secret in ("Roe", "PID-4711", bad_ds.SOPInstanceUID, bad_ds.StudyInstanceUID):
        assert all(secret not in line for line in lines)
        assert secret not in spool.reason(failed)
    assert sum("sent to DEST" in line for line in lines) == 2


def test_success_means_on_disk(tmp_path, spool, receiver):
    """The handler answers Success only after the instance is in the spool, fsynced."""
    seen = []
    gate = threading.Event()
    node = listener(spool, receiver.destination)
    real_receive = spool.receive

    def receive(blob, ref):
        receipt = real_receive(blob, ref)
        seen.append(spool.instance(receipt).read_bytes() == blob)
        gate.wait(10)  # hold the worker back: the file must be there before Success
        return receipt

    spool.receive = receive
    with node:
        threading.Timer(0.5, gate.set).start()
        statuses, _ = push(node.port, [cr_file(tmp_path / "a.dcm")])
        assert statuses == [0] and seen == [True]
        assert wait_for(lambda: empty(spool))


def test_only_cr_and_dx_are_accepted_in_the_association(tmp_path, spool, receiver):
    sc = cr_file(tmp_path / "sc.dcm", sop_class=SecondaryCaptureImageStorage)
    dx = cr_file(tmp_path / "dx.dcm", seed=2, Modality="DX",
                 sop_class=DigitalXRayImageStorageForPresentation)  # fmt: skip
    with listener(spool, receiver.destination) as node:
        with pytest.raises(ValueError, match="presentation context"):
            push(node.port, [sc], sop_class=SecondaryCaptureImageStorage)
        statuses, _ = push(node.port, [dx], sop_class=DigitalXRayImageStorageForPresentation)
        assert statuses == [0]
        assert wait_for(lambda: empty(spool))
    assert node.stats.received == 1


def test_secondary_capture_is_accepted_on_request_and_other_modalities_refused(
    tmp_path, spool, receiver
):
    sc = cr_file(tmp_path / "sc.dcm", sop_class=SecondaryCaptureImageStorage)
    ct = cr_file(tmp_path / "ct.dcm", Modality="CT", sop_class=SecondaryCaptureImageStorage)
    with listener(spool, receiver.destination, secondary_capture=True) as node:
        statuses, _ = push(node.port, [sc, ct], sop_class=SecondaryCaptureImageStorage)
        assert statuses == [0, NOT_A_CHEST_RADIOGRAPH]
        assert wait_for(lambda: empty(spool))
    assert node.stats.refused == 1 and len(spool.failures()) == 0


def test_negative_images_send_an_sr_only(tmp_path, spool, receiver):
    with listener(spool, receiver.destination, analyzer=analyzer(NEGATIVE_OP)) as node:
        push(node.port, [cr_file(tmp_path / "a.dcm")])
        assert wait_for(lambda: len(receiver.received) == 1 and empty(spool))
    assert receiver.received[0].Modality == "SR"


def test_a_full_spool_answers_out_of_resources_and_keeps_nothing(tmp_path, receiver):
    files = [cr_file(tmp_path / f"{i}.dcm", seed=i) for i in range(3)]
    limit = len(files[0].read_bytes()) + 100
    with Spool(tmp_path / "spool", max_bytes=limit) as spool:
        gate = threading.Event()
        node = listener(spool, receiver.destination, batch_size=1)
        node.analyse_queued = lambda: gate.wait(5) and 0  # the spool fills up
        lines = []
        node.report = lines.append
        with node:
            statuses, _ = push(node.port, files)
            gate.set()
        assert statuses == [0, OUT_OF_RESOURCES, OUT_OF_RESOURCES]
        assert len(spool.queued()) == 1 and node.stats.refused == 2
        assert "0xA700" in lines[0] and "--spool-max-gb" in lines[0]


def test_a_down_destination_is_retried_until_it_is_back(tmp_path, spool):
    port = free_port()
    lines = []
    nowhere = Destination("DEST", "127.0.0.1", port)
    with listener(spool, nowhere, report=lines.append) as node:
        push(node.port, [cr_file(tmp_path / "a.dcm"), cr_file(tmp_path / "b.dcm", seed=3)])
        assert wait_for(lambda: sum("not sent to DEST" in line for line in lines) >= 3)
        assert spool.counts().pending == 2 and node.stats.failed == 0
        assert "next try in" in lines[-1] and "could not open an association" in lines[-1]
        receiver = Receiver(port=port)
        try:
            assert wait_for(lambda: empty(spool))
        finally:
            receiver.stop()
    assert len(receiver.received) == 4 and node.stats.sent == 2
    assert node.status()["pending_delivery"] == 0


def test_a_refused_object_is_retried_and_given_up_after_retry_for(tmp_path, spool, receiver):
    receiver.refuse = True
    now = [1000.0]
    lines = []
    node = listener(spool, receiver.destination, clock=lambda: now[0], retry_for=3600,
                    report=lines.append)  # fmt: skip
    with node:
        push(node.port, [cr_file(tmp_path / "a.dcm")])
        assert wait_for(lambda: spool.counts().pending == 1 and spool.item(
            spool.pending()[0]).attempts >= 1)  # fmt: skip
        assert spool.counts().failed == 0
        item = spool.item(spool.pending()[0])
        now[0] = item.created + 3601  # a day later, say
        assert wait_for(lambda: spool.counts().failed == 1)
    [failed] = spool.failures()
    reason = spool.reason(failed)
    assert "within 1 h (--retry-for)" in reason and "0xa700" in reason
    assert sorted(p.name for p in (spool.failed / failed).iterdir()) == [
        "1-SEG.dcm", "2-SR.dcm", "instance.dcm", "reason.txt", "state.json"
    ]  # fmt: skip
    assert any("gave up after 1 h" in line and "moved to failed/" in line for line in lines)


def test_an_unreachable_destination_expires_old_items_together(tmp_path, spool):
    for i in range(3):
        receipt = spool.receive(cr_file(tmp_path / f"{i}.dcm", seed=i).read_bytes(), f"img-{i}")
        spool.to_outbox(receipt, [("SR", b"not sent")], f"img-{i}: SR")
    node = listener(spool, Destination("DEST", "127.0.0.1", free_port()),
                    clock=lambda: time.time() + 7200, retry_for=3600)  # fmt: skip
    node.deliver_due()
    assert spool.counts().failed == 3 and spool.counts().pending == 0


def test_a_restart_delivers_what_the_spool_holds_first(tmp_path, spool, receiver):
    receiver.stop()  # down while the first listener runs
    with listener(spool, receiver.destination) as first:
        push(first.port, [cr_file(tmp_path / f"{i}.dcm", seed=i) for i in range(3)])
        assert wait_for(lambda: spool.counts().pending == 3)
    receiver.start()
    with listener(spool, receiver.destination) as second:
        assert wait_for(lambda: empty(spool))
    assert second.stats.sent == 3 and len(receiver.received) == 6


def test_status_json_tells_what_waits(tmp_path, spool):
    with listener(spool, Destination("DEST", "127.0.0.1", free_port())) as node:
        push(node.port, [cr_file(tmp_path / "a.dcm")])
        assert wait_for(lambda: spool.read_status().get("pending_delivery") == 1)
    status = spool.read_status()
    assert status["destination"] == f"DEST@127.0.0.1:{node.destination.port}"
    assert "could not open an association" in status["last_delivery_error"]
    assert stat.S_IMODE(os.stat(spool.root / "status.json").st_mode) == 0o600


def test_the_listener_answers_only_its_own_ae_title(spool, receiver):
    with listener(spool, receiver.destination) as node:
        ae = AE("MODALITY")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="SOMEONE")
        assert not assoc.is_established


def test_send_tells_unreachable_from_refused(tmp_path, receiver):
    ds = read(cr_file(tmp_path / "a.dcm").read_bytes())
    with pytest.raises(DestinationUnreachable):
        send([ds], Destination("DEST", "127.0.0.1", free_port()), "PTXSEG", timeout=5)
    with pytest.raises(SendFailed, match="did not store") as refused:
        receiver_sr = analyzer().analyse([cr_file(tmp_path / "b.dcm").read_bytes()])[0]
        receiver.refuse = True
        send(receiver_sr.outputs, receiver.destination, "PTXSEG", timeout=5)
    assert not isinstance(refused.value, DestinationUnreachable)


def test_backoff_doubles_up_to_its_cap():
    assert [backoff(n) for n in (1, 2, 3, 9, 20)] == [2, 4, 8, 300, 300]


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
