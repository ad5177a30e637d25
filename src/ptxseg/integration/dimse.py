"""`ptxseg listen`: a DICOM C-STORE receiver that segments chest radiographs and forwards results.

A modality or a PACS pushes images to this AE (pynetdicom). The C-STORE handler only checks the
modality and puts the encoded file on a bounded queue, so a sender is answered at once: Success for
a queued CR/DX image, Success for anything else (acknowledged, not analysed: a PACS that pushes a
whole study must not see errors), and "Refused: out of resources" (0xA700) when the queue stays
full for `enqueue_timeout` seconds. C-ECHO (verification) is answered.

One worker thread takes images off the queue in small batches, runs the `Analyzer`, and C-STOREs
the SEG (positives) and SR (every image) to the destination AE in one association per image. A
failure (unreadable image, prediction error, destination down or refusing) is logged with the
image's digest (`analysis.image_ref`) and no patient identifiers, and the worker goes on with the
next image.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from ptxseg.integration.analysis import (
    CHEST_RADIOGRAPH_MODALITIES,
    Analyzer,
    ImageFailure,
    describe,
)

log = logging.getLogger("ptxseg.integration.dimse")

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
AE_TITLE = re.compile(r"[ -~]{1,16}")


@dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_destination(text: str) -> Destination:
    """'AET@HOST:PORT' (e.g. ORTHANC@127.0.0.1:4242) -> Destination; ValueError that says why."""
    match = re.fullmatch(r"([^@]+)@(\[[^\]]+\]|[^:@]+):(\d+)", text.strip())
    if not match:
        raise ValueError(f"--send-to {text!r}: expected AET@HOST:PORT, e.g. ORTHANC@127.0.0.1:4242")
    aet, host, port = match.group(1), match.group(2).strip("[]"), int(match.group(3))
    check_ae_title(aet, "--send-to")
    if not 0 < port < 65536:
        raise ValueError(f"--send-to {text!r}: port {port} is not between 1 and 65535")
    return Destination(aet, host, port)


def check_ae_title(title: str, option: str = "--ae-title") -> str:
    if not AE_TITLE.fullmatch(title) or title.strip() == "" or "\\" in title:
        raise ValueError(
            f"{option} {title!r}: an AE title is 1 to 16 printable ASCII characters, no backslash"
        )
    return title


class SendFailed(RuntimeError):
    """The destination could not be reached or did not accept an object."""


def send(datasets, destination: Destination, calling_ae: str, timeout: float = 30.0) -> None:
    """C-STORE the datasets to the destination in one association; SendFailed on any failure."""
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for sop_class in dict.fromkeys(str(ds.SOPClassUID) for ds in datasets):
        ae.add_requested_context(sop_class)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        raise SendFailed(
            f"could not open an association with {destination} (rejected, aborted or "
            "unreachable): check that it runs and accepts this AE title "
            f"{calling_ae!r} as a calling AE"
        )
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = int(status.Status) if status and "Status" in status else None
            if code != SUCCESS and (code is None or code >> 12 != 0xB):  # 0xBxxx: warnings
                shown = f"status {code:#06x}" if code is not None else "no answer"
                raise SendFailed(f"{destination} did not store the {ds.Modality}: {shown}")
    finally:
        assoc.release()


@dataclass
class ListenerStats:
    received: int = 0
    ignored: int = 0
    refused: int = 0
    analysed: int = 0
    sent: int = 0
    failed: int = 0
    log: list[str] = field(default_factory=list)


class Listener:
    """The C-STORE SCP, its bounded queue and its worker (see the module docstring)."""

    def __init__(
        self,
        analyzer: Analyzer,
        destination: Destination,
        ae_title: str = "PTXSEG",
        host: str = "127.0.0.1",
        port: int = 11112,
        queue_size: int = 16,
        batch_size: int = 4,
        enqueue_timeout: float = 30.0,
        report: Callable[[str], None] = log.info,
        sender: Callable = send,
    ):
        self.analyzer, self.destination = analyzer, destination
        self.ae_title = check_ae_title(ae_title)
        self.host, self.port = host, port
        self.batch_size, self.enqueue_timeout = max(1, batch_size), enqueue_timeout
        self.queue: queue.Queue[bytes | None] = queue.Queue(maxsize=max(1, queue_size))
        self.stats = ListenerStats()
        self.report, self.sender = report, sender
        self._lock = threading.Lock()
        self._server = None
        self._worker: threading.Thread | None = None

    def _note(self, line: str, counter: str | None = None) -> None:
        with self._lock:
            if counter:
                setattr(self.stats, counter, getattr(self.stats, counter) + 1)
            self.stats.log.append(line)
        self.report(line)

    def handle_store(self, event) -> int:
        """EVT_C_STORE: queue a CR/DX image (bounded), acknowledge anything else."""
        with self._lock:
            self.stats.received += 1
        modality = str(event.dataset.get("Modality", "")).upper()
        if modality not in CHEST_RADIOGRAPH_MODALITIES:
            self._note(f"received a {modality or 'no-modality'} object: not analysed", "ignored")
            return SUCCESS
        try:
            self.queue.put(event.encoded_dataset(), timeout=self.enqueue_timeout)
        except queue.Full:
            self._note(
                f"queue full ({self.queue.maxsize} images) for {self.enqueue_timeout:g} s: "
                "refused an image (0xA700); the sender may retry",
                "refused",
            )
            return OUT_OF_RESOURCES
        return SUCCESS

    def _take_batch(self) -> tuple[list[bytes], bool]:
        """Block for one item, then take what is already waiting, up to batch_size."""
        first = self.queue.get()
        if first is None:
            return [], True
        batch = [first]
        while len(batch) < self.batch_size:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def work(self) -> None:
        """The worker loop: analyse and forward until the stop sentinel arrives."""
        stop = False
        while not stop:
            batch, stop = self._take_batch()
            if batch:
                self.process(batch)

    def process(self, batch: list[bytes]) -> None:
        for outcome in self.analyzer.analyse(batch):
            if isinstance(outcome, ImageFailure):
                self._note(describe(outcome), "failed")
                continue
            with self._lock:
                self.stats.analysed += 1
            try:
                self.sender(outcome.outputs, self.destination, self.ae_title)
            except Exception as err:  # noqa: BLE001 - one image's failure must not stop the rest
                self._note(f"{outcome.ref}: analysed but not sent: {err}", "failed")
                continue
            self._note(f"{describe(outcome)} -> sent to {self.destination}", "sent")

    def start(self) -> Listener:
        """Start the worker and the SCP (non-blocking); returns self."""
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = True
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self._worker = threading.Thread(target=self.work, name="ptxseg-listen-worker", daemon=True)
        self._worker.start()
        self._server = ae.start_server(
            (self.host, self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self.handle_store)],
        )
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting images, finish the queued ones, and stop the worker."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._worker is not None:
            self.queue.put(None)
            self._worker.join(timeout)
            self._worker = None

    def __enter__(self) -> Listener:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
