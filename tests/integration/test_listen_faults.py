"""`ptxseg listen` under faults (markers slow + pacs; `make test-faults`): a modality sends 200
instances while the listener is killed with `kill -9` at 5 seeded random moments and restarted,
and the destination (a real Orthanc) is stopped for part of the run.

After the last restart has drained the spool, every instance that was answered Success must have
exactly one SR at the destination, and one SEG when the SR says positive, with the UIDs that
the model and operating point give it; or sit in `failed/` with a reason. None may be lost. The
modality resends what it did not see acknowledged, as modalities do, so some instances arrive
twice: the destination must still hold one copy of each result.

FAULT_INSTANCES, FAULT_KILLS and FAULT_SEED change the run; FAULT_REPORT names a JSON file for
the figures (they are printed too: `pytest -rP`).
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from orthanc import restart_orthanc, start_orthanc, stop_orthanc
from pacs_helpers import cr_file, free_port, read
from predict_helpers import make_checkpoint
from pynetdicom import AE
from pynetdicom.sop_class import ComputedRadiographyImageStorage, Verification

from ptxseg.inference.sr import read_report
from ptxseg.integration.spool import Spool

pytestmark = [pytest.mark.slow, pytest.mark.pacs]
INSTANCES = int(os.environ.get("FAULT_INSTANCES", "200"))
KILLS = int(os.environ.get("FAULT_KILLS", "5"))
SEED = int(os.environ.get("FAULT_SEED", "18"))
EVERY_IMAGE_POSITIVE = {"top": 0.0, "bottom": 0.0, "min_area": 0}
ENV = dict(
    os.environ,
    OMP_NUM_THREADS="1",
    PYTHONPATH=os.pathsep.join([str(Path("src").resolve()), *sys.path]),
)


def half_positive_operating_point(checkpoint: Path, files: list[Path]) -> dict:
    """top = bottom = the median of the images' maximum probabilities: about half positive."""
    from ptxseg.data.dicom import read_image
    from ptxseg.inference.predictor import Predictor

    predictor = Predictor(checkpoint)
    images = [read_image(path) for path in files]
    found = predictor.predict_batch([i for i, _ in images], [m for _, m in images])
    median = float(np.median([p.findings["probability"] for p in found]))
    return {"top": median, "bottom": median, "min_area": 1}


class Node:
    """The listener as its own process: started, killed with SIGKILL, started again."""

    def __init__(self, command: list[str], log: Path, port: int):
        self.command, self.log, self.port = command, log, port
        self.process: subprocess.Popen | None = None
        self.generation = 0

    def start(self) -> None:
        with open(self.log, "ab") as sink:
            self.process = subprocess.Popen(
                self.command, stdout=sink, stderr=subprocess.STDOUT, env=ENV
            )
        self.generation += 1
        wait(self.ready, 180, "the listener's C-ECHO")

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"the listener exited:\n{self.log.read_text()[-3000:]}")
        return echo(self.port)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> str:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(120)
        except subprocess.TimeoutExpired:
            self.kill()
        return self.log.read_text()


def echo(port: int) -> bool:
    ae = AE("MODALITY")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 5
    assoc = ae.associate("127.0.0.1", port, ae_title="PTXSEG")
    if not assoc.is_established:
        return False
    answer = assoc.send_c_echo()
    ok = "Status" in answer and int(answer.Status) == 0
    assoc.release()
    return ok


def wait(condition, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class Modality:
    """Sends the instances in small associations, at a modality's pace, and resends whatever
    was not acknowledged until every one is."""

    def __init__(self, datasets: dict, port: int, rng: random.Random):
        self.datasets, self.port, self.rng = datasets, port, rng
        self.acknowledged: set[str] = set()
        self.requests = 0
        self.statuses: dict[int, int] = {}

    def run(self, deadline: float) -> None:
        while len(self.acknowledged) < len(self.datasets) and time.monotonic() < deadline:
            todo = [uid for uid in self.datasets if uid not in self.acknowledged]
            self.send(todo[: self.rng.randint(1, 12)])

    def send(self, uids: list[str]) -> None:
        ae = AE("MODALITY")
        ae.add_requested_context(ComputedRadiographyImageStorage)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        assoc = ae.associate("127.0.0.1", self.port, ae_title="PTXSEG")
        if not assoc.is_established:
            time.sleep(0.3)  # the listener is down: try again shortly
            return
        try:
            for uid in uids:
                self.requests += 1
                answer = assoc.send_c_store(self.datasets[uid])
                if not answer or "Status" not in answer:
                    return  # aborted (killed): not acknowledged
                status = int(answer.Status)
                self.statuses[status] = self.statuses.get(status, 0) + 1
                if status == 0:
                    self.acknowledged.add(uid)
                time.sleep(self.rng.uniform(0, 0.08))
        finally:
            if assoc.is_established:
                assoc.release()


def test_kill_9_and_a_stopped_destination_lose_nothing(tmp_path, caplog):
    caplog.set_level(logging.CRITICAL, logger="pynetdicom")  # refused connections are expected
    rng = random.Random(SEED)
    files = [cr_file(tmp_path / f"in-{i:03d}.dcm", seed=i) for i in range(INSTANCES)]
    datasets = {str(ds.SOPInstanceUID): ds for ds in (read(p.read_bytes()) for p in files)}
    checkpoint = make_checkpoint(tmp_path / "m.ckpt", "resnet18", 64, EVERY_IMAGE_POSITIVE)
    operating_point = half_positive_operating_point(checkpoint, files)
    checkpoint = make_checkpoint(tmp_path / "m.ckpt", "resnet18", 64, operating_point)

    listen_port, spool_dir = free_port(), tmp_path / "spool"
    orthanc = start_orthanc(
        tmp_path / "orthanc", modalities={"ptxseg": ["PTXSEG", "127.0.0.1", listen_port]}
    )
    log = tmp_path / "listen.log"
    command = [sys.executable, "-m", "ptxseg", "listen", "-c", str(checkpoint),
               "--port", str(listen_port), "--ae-title", "PTXSEG",
               "--send-to", f"ORTHANC@127.0.0.1:{orthanc.dicom_port}",
               "--spool", str(spool_dir), "--retry-for", "1h", "--batch-size", "4"]  # fmt: skip
    node = Node(command, log, listen_port)
    modality = Modality(datasets, listen_port, random.Random(SEED + 1))
    kills: list[dict] = []
    down_after, up_after = 1, min(3, KILLS - 1)  # the destination is down between these kills
    started = time.monotonic()

    def killer() -> None:
        nonlocal orthanc
        for k in range(1, KILLS + 1):
            time.sleep(rng.uniform(1.0, 8.0))
            counts = Spool(spool_dir).counts()
            node.kill()
            kills.append({
                "at_s": round(time.monotonic() - started, 1),
                "acknowledged": len(modality.acknowledged),
                "queued": counts.queued,
                "pending": counts.pending,
                "destination_up": orthanc.process.poll() is None,
            })  # fmt: skip
            if k == down_after:
                stop_orthanc(orthanc)
            if k == up_after:
                orthanc = restart_orthanc(orthanc)
            node.start()

    try:
        node.start()
        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        modality.run(deadline=time.monotonic() + 600)
        thread.join(600)
        assert not thread.is_alive(), "the kills did not finish"
        spool = Spool(spool_dir)
        wait(lambda: (c := spool.counts()).queued == 0 and c.pending == 0, 600,
             "the spool to drain")  # fmt: skip
        out = node.stop()
        reports = [read_report(orthanc.file(i)) for i in orthanc_ids(orthanc, "SR")]
        segs = {str(read(orthanc.file(i)).SOPInstanceUID) for i in orthanc_ids(orthanc, "SEG")}
    finally:
        if node.process is not None and node.process.poll() is None:
            node.kill()
        stop_orthanc(orthanc)

    by_source: dict[str, list[dict]] = {}
    for report in reports:
        by_source.setdefault(report["source_sop_instance_uid"], []).append(report)
    failed = {}
    for receipt in spool.failures():
        instance = read((spool.failed / receipt / "instance.dcm").read_bytes())
        failed[str(instance.SOPInstanceUID)] = spool.reason(receipt)
    delivered = {uid for uid in modality.acknowledged if uid in by_source}
    lost = modality.acknowledged - delivered - set(failed)
    positives = [uid for uid in delivered if by_source[uid][0]["pneumothorax"]]
    figures = {
        "instances_sent": len(datasets),
        "c_store_requests": modality.requests,
        "acknowledged": len(modality.acknowledged),
        "delivered": len(delivered),
        "in_failed": len(failed),
        "lost": len(lost),
        "positive_with_seg": sum(
            by_source[uid][0]["segmentation_sop_instance_uid"] in segs for uid in positives
        ),
        "positive": len(positives),
        "seg_at_destination": len(segs),
        "sr_at_destination": len(reports),
        "statuses": {f"{k:#06x}": v for k, v in modality.statuses.items()},
        "kills": kills,
        "listener_starts": node.generation,
        "seconds": round(time.monotonic() - started, 1),
        "seed": SEED,
    }
    print(json.dumps(figures, indent=1))
    if os.environ.get("FAULT_REPORT"):
        Path(os.environ["FAULT_REPORT"]).write_text(json.dumps(figures, indent=1))

    assert len(kills) == KILLS and any(not k["destination_up"] for k in kills[1:])
    assert len(modality.acknowledged) == len(datasets)
    assert not lost, f"lost {len(lost)} acknowledged instances"
    assert all(reason.strip() for reason in failed.values())
    assert all(len(found) == 1 for found in by_source.values()), "an image has two SRs"
    assert set(by_source) <= set(datasets)
    for uid in delivered:  # one SEG exactly when the SR says positive, the one it names
        report = by_source[uid][0]
        if report["pneumothorax"]:
            assert report["segmentation_sop_instance_uid"] in segs
        else:
            assert report["segmentation_sop_instance_uid"] is None
    assert len(segs) == len(positives) and 0 < len(positives) < len(delivered)
    assert "Traceback" not in out


def orthanc_ids(orthanc, modality: str) -> list[str]:
    """Orthanc ids of the stored instances of one modality (one request)."""
    found = orthanc.post(
        "/tools/find",
        json.dumps({"Level": "Instance", "Query": {"Modality": modality}}),
    )
    return list(found)
