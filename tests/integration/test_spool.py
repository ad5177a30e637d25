"""The listener's spool: owner-only folders, one lock, a size limit, and a crash at any step of any
move leaving each instance in exactly one place after the restart's recovery."""

import json
import os
import stat

import pytest

from ptxseg.integration import spool as spool_module
from ptxseg.integration.spool import (
    Spool,
    SpoolBusy,
    SpoolFull,
    default_spool,
    receipt_ref,
    receipt_time,
)

BLOB = b"\0" * 128 + b"DICM" + b"instance bytes" * 10
RESULTS = [("SEG", b"seg bytes"), ("SR", b"sr bytes")]


@pytest.fixture
def spool(tmp_path):
    with Spool(tmp_path / "spool") as opened:
        yield opened


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def where(spool: Spool, receipt: str) -> list[str]:
    """Every place an instance is in (the invariant: exactly one)."""
    places = {
        "queued": spool.incoming / f"{receipt}.dcm",
        "pending": spool.outbox / receipt / "instance.dcm",
        "failed": spool.failed / receipt / "instance.dcm",
    }
    return [name for name, path in places.items() if path.exists()]


def test_folders_are_owner_only_and_files_0600(spool):
    receipt = spool.receive(BLOB, "img-abc")
    for folder in (spool.root, spool.incoming, spool.outbox, spool.failed):
        assert mode(folder) == 0o700
    assert mode(spool.instance(receipt)) == 0o600
    spool.to_outbox(receipt, RESULTS, "img-abc: no pneumothorax; SR")
    item = spool.outbox / receipt
    assert mode(item) == 0o700
    assert {mode(p) for p in item.iterdir()} == {0o600}


def test_receipts_keep_arrival_order_and_name_the_image(spool):
    receipts = [spool.receive(BLOB, f"img-{i}") for i in range(5)]
    assert spool.queued() == receipts
    assert receipt_ref(receipts[2]) == "img-2"
    assert abs(receipt_time(receipts[0]) - os.path.getmtime(spool.instance(receipts[0]))) < 5


def test_the_same_instance_twice_is_two_receipts(spool):
    first, second = spool.receive(BLOB, "img-a"), spool.receive(BLOB, "img-a")
    assert first != second and spool.queued() == [first, second]


def test_a_second_opener_is_refused_until_the_first_closes(tmp_path):
    first = Spool(tmp_path / "s").open(owner="PTXSEG on 127.0.0.1:11112")
    with pytest.raises(SpoolBusy, match=f"pid {os.getpid()} PTXSEG on 127.0.0.1:11112"):
        Spool(tmp_path / "s").open()
    assert first.locked() and Spool(tmp_path / "s").locked()
    first.close()
    assert not Spool(tmp_path / "s").locked()
    Spool(tmp_path / "s").open().close()


def test_a_full_spool_refuses_and_writes_nothing(tmp_path):
    with Spool(tmp_path / "s", max_bytes=2 * len(BLOB) + 10) as spool:
        spool.receive(BLOB, "img-1")
        spool.receive(BLOB, "img-2")
        with pytest.raises(SpoolFull, match="--spool-max-gb"):
            spool.receive(BLOB, "img-3")
        assert len(spool.queued()) == 2
        assert not any(p.name.startswith(".") for p in spool.incoming.iterdir())


def test_a_purged_failed_folder_makes_room_again(tmp_path, monkeypatch):
    with Spool(tmp_path / "s", max_bytes=len(BLOB) + 10) as spool:
        receipt = spool.receive(BLOB, "img-1")
        spool.fail_queued(receipt, "img-1: failed: unreadable")
        with pytest.raises(SpoolFull):
            spool.receive(BLOB, "img-2")
        for path in (spool.failed / receipt).iterdir():
            path.unlink()
        monkeypatch.setattr(spool, "_measured", 0.0)  # the size is measured again (5 s apart)
        spool.receive(BLOB, "img-2")


def test_a_nearly_full_disk_refuses(spool, monkeypatch):
    usage = spool_module.shutil.disk_usage(spool.root)
    monkeypatch.setattr(spool_module.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    with pytest.raises(SpoolFull, match="MB free"):
        spool.receive(BLOB, "img-1")


def test_the_life_of_an_instance(spool):
    delivered, failed_analysis, failed_delivery = (
        spool.receive(BLOB, f"img-{i}") for i in range(3)
    )
    spool.fail_queued(failed_analysis, "img-1: failed: ImageReadError: truncated")
    for receipt in (delivered, failed_delivery):
        spool.to_outbox(receipt, RESULTS, f"{receipt_ref(receipt)}: no pneumothorax; SR")
    item = spool.item(delivered)
    assert [p.name for p in item.results] == ["1-SEG.dcm", "2-SR.dcm"]
    assert item.attempts == 0 and item.summary.endswith("no pneumothorax; SR")
    spool.record_attempt(item, "could not open an association")
    assert spool.item(delivered).attempts == 1
    assert spool.item(delivered).state["last_error"] == "could not open an association"
    spool.delivered(delivered)
    spool.fail_pending(failed_delivery, "not delivered within 24 h")
    assert where(spool, delivered) == [] and not (spool.outbox / delivered).exists()
    assert where(spool, failed_analysis) == ["failed"] and where(spool, failed_delivery) == [
        "failed"
    ]
    assert "analysis failed" in spool.reason(failed_analysis)
    assert "truncated" in spool.reason(failed_analysis)
    assert spool.reason(failed_delivery).startswith("delivery failed")
    assert (spool.failed / failed_delivery / "2-SR.dcm").read_bytes() == b"sr bytes"
    counts = spool.counts()
    assert (counts.queued, counts.pending, counts.failed) == (0, 0, 2)


class Crash(BaseException):
    """What a kill -9 does to the step in progress: nothing after it happens."""


STEPS = {
    "to_outbox": lambda s, r: s.to_outbox(r, RESULTS, f"{receipt_ref(r)}: SR"),
    "fail_queued": lambda s, r: s.fail_queued(r, "unreadable"),
    "delivered": lambda s, r: (s.to_outbox(r, RESULTS, "x"), s.delivered(r)),
    "fail_pending": lambda s, r: (s.to_outbox(r, RESULTS, "x"), s.fail_pending(r, "24 h")),
}


@pytest.mark.parametrize("step", list(STEPS))
def test_a_crash_at_every_rename_and_fsync_leaves_the_instance_in_one_place(
    tmp_path, monkeypatch, step
):
    """Interrupt the step at its 1st, 2nd, ... rename or fsync; after a restart (recovery), the
    instance is in exactly one place with its bytes, or it was delivered (the last step)."""
    calls = {"n": 0, "at": 0}
    real_replace, real_fsync = os.replace, os.fsync

    def counted(real):
        def call(*args):
            calls["n"] += 1
            if calls["n"] == calls["at"]:
                raise Crash
            return real(*args)

        return call

    for at in range(1, 40):
        root = tmp_path / f"{step}-{at}"
        with Spool(root) as spool:
            receipt = spool.receive(BLOB, "img-x")
            calls.update(n=0, at=at)
            monkeypatch.setattr(spool_module.os, "replace", counted(real_replace))
            monkeypatch.setattr(spool_module.os, "fsync", counted(real_fsync))
            try:
                STEPS[step](spool, receipt)
                finished = True
            except Crash:
                finished = False
            finally:
                monkeypatch.setattr(spool_module.os, "replace", real_replace)
                monkeypatch.setattr(spool_module.os, "fsync", real_fsync)
        with Spool(root) as reopened:  # the restart
            places = where(reopened, receipt)
            if step == "delivered" and not places:
                assert not reopened.pending() and not reopened.queued()
            else:
                assert len(places) == 1, (at, places)
                place = places[0]
                blob = {
                    "queued": reopened.incoming / f"{receipt}.dcm",
                    "pending": reopened.outbox / receipt / "instance.dcm",
                    "failed": reopened.failed / receipt / "instance.dcm",
                }[place]
                assert blob.read_bytes() == BLOB
                if place == "pending":
                    item = reopened.item(receipt)
                    assert len(item.results) == 2 and item.state
                if place == "failed":
                    assert reopened.reason(receipt)
            leftovers = [p.name for d in (reopened.outbox, reopened.failed) for p in d.iterdir()]
            assert not [name for name in leftovers if name.startswith(".")], leftovers
        if finished:
            break
    else:
        pytest.fail(f"{step} never finished")


def test_an_unacknowledged_temporary_file_is_dropped_at_open(tmp_path):
    with Spool(tmp_path / "s") as spool:
        (spool.incoming / ".0001-img-x.dcm.77.1.tmp").write_bytes(b"half")
    with Spool(tmp_path / "s") as spool:
        assert list(spool.incoming.iterdir()) == []
        assert spool.recovered["unacknowledged"] == 1


def test_status_round_trip(spool):
    spool.write_status({"pid": 1, "destination": "DEST@127.0.0.1:104"})
    assert spool.read_status()["destination"] == "DEST@127.0.0.1:104"
    assert json.loads((spool.root / "status.json").read_text())["pid"] == 1


def test_the_default_spool_is_under_the_state_directory(tmp_path):
    env = {"XDG_STATE_HOME": str(tmp_path / "state"), "HOME": str(tmp_path / "home")}
    assert default_spool("PTXSEG", 11112, env) == tmp_path / "state/ptxseg/listen/PTXSEG-11112"
    env["XDG_STATE_HOME"] = "relative/ignored"
    expected = tmp_path / "home/.local/state/ptxseg/listen/A_B_C-104"
    assert default_spool("A B/C", 104, env) == expected
