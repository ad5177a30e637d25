"""`ptxseg listen`: a DICOM C-STORE receiver that segments chest radiographs and forwards results.

It behaves as DICOM routers do: store, then acknowledge. A modality or a PACS pushes images to this
AE (pynetdicom); only the SOP classes ptxseg analyses are accepted in the association (CR and DX
For Presentation; Secondary Capture on request, for archives such as SIIM's), so nobody is told
Success for an image that nobody keeps. The C-STORE handler writes the instance to the spool and
fsyncs it (`spool.Spool`) before it answers Success; when the spool is full (`--spool-max-gb`) or
the disk is, it answers Out of Resources (0xA700), so the modality keeps the image and retries.

Two worker threads take it from there, both from the spool on disk:
- analysis: oldest first, in small batches, through the `Analyzer`; the results (SEG for
  positives, SR for every image) go to the outbox with the instance, or the instance goes to
  `failed/` with the reason (unreadable image, prediction error);
- delivery: each outbox item is C-STOREd to the destination in one association; it leaves the
  spool once the destination stored everything. A failure is retried with exponential back-off
  (per destination when it cannot be reached, per item when it refuses an object) until the item
  is `retry_for` seconds old; then it moves to `failed/` with the last error, and a line says so.

Resending is harmless: the result UIDs derive from the instance, the model and the operating
point, so the destination receives the very same objects again. After a crash, a start finishes
what the spool holds first (the oldest items are taken first). Log lines name images by a digest
(`analysis.image_ref`), never by patient identifiers.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ptxseg.integration.analysis import (
    CHEST_RADIOGRAPH_MODALITIES,
    Analyzer,
    ImageFailure,
    dataset_to_bytes,
    describe,
    image_ref,
    repaired_uid,
)
from ptxseg.integration.spool import OutboxItem, Spool, SpoolFull, receipt_ref

log = logging.getLogger("ptxseg.integration.dimse")

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
NOT_A_CHEST_RADIOGRAPH = 0xA900  # "data set does not match SOP class": we analyse CR/DX only
CANNOT_UNDERSTAND = 0xC000
AE_TITLE = re.compile(r"[ -~]{1,16}")
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
DAY = 24 * 3600.0


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


def accepted_sop_classes(secondary_capture: bool = False) -> list[str]:
    """The storage SOP classes the listener accepts in an association."""
    return [CR_IMAGE, DX_FOR_PRESENTATION] + [SECONDARY_CAPTURE] * secondary_capture


class SendFailed(RuntimeError):
    """The destination did not accept an object (it answered, with a failure status)."""


class DestinationUnreachable(SendFailed):
    """No association with the destination: down, unreachable, or refusing this AE title."""


def send(datasets, destination: Destination, calling_ae: str, timeout: float = 30.0) -> None:
    """C-STORE the datasets to the destination in one association; SendFailed on any failure."""
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for sop_class in dict.fromkeys(str(ds.SOPClassUID) for ds in datasets):
        ae.add_requested_context(sop_class)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        raise DestinationUnreachable(
            f"could not open an association with {destination} (rejected, aborted or "
            "unreachable): check that it runs and accepts this AE title "
            f"{calling_ae!r} as a calling AE"
        )
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = int(status.Status) if status and "Status" in status else None
            if code is None and not assoc.is_established:
                raise DestinationUnreachable(f"{destination} went away while storing")
            if code != SUCCESS and (code is None or code >> 12 != 0xB):  # 0xBxxx: warnings
                shown = f"status {code:#06x}" if code is not None else "no answer"
                raise SendFailed(f"{destination} did not store the {ds.Modality}: {shown}")
    finally:
        if assoc.is_established:
            assoc.release()


def backoff(attempts: int, base: float = 2.0, cap: float = 300.0) -> float:
    """Seconds before the next try after `attempts` failed ones: 2, 4, 8, ... at most 5 min."""
    return min(cap, base * 2 ** max(0, attempts - 1))


def duration(seconds: float) -> str:
    """24 h, 90 min, 45 s: a duration as people say it."""
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    if seconds >= 120:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def parse_duration(text: str, option: str) -> float:
    """'24h', '90m', '30s', '2d' or a number of seconds -> seconds; ValueError naming `option`."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    raw = text.strip().lower()
    scale = units.get(raw[-1:])
    number = raw[:-1] if scale else raw
    try:
        seconds = float(number) * (scale or 1)
    except ValueError:
        seconds = float("nan")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{option} {text!r}: expected a positive duration, e.g. 24h, 90m, 3600s")
    return seconds


@dataclass(frozen=True)
class ListenerSettings:
    """Where the listener answers and how it delivers: its AE title, address and port, the
    analysis batch size, how long (seconds) a result is retried before it is failed, whether
    Secondary Capture images are accepted, and the delivery back-off (first wait, longest)."""

    ae_title: str = "PTXSEG"
    host: str = "127.0.0.1"
    port: int = 11112
    batch_size: int = 4
    retry_for: float = DAY
    secondary_capture: bool = False
    retry_base: float = 2.0
    retry_cap: float = 300.0


@dataclass
class ListenerStats:
    received: int = 0
    refused: int = 0
    analysed: int = 0
    sent: int = 0
    failed: int = 0

    def line(self) -> str:
        return (
            f"received {self.received}, refused {self.refused}, analysed {self.analysed}, "
            f"sent {self.sent}, failed {self.failed}"
        )


class Listener:
    """The C-STORE SCP over a spool, with its analysis and delivery workers (see the module
    docstring). `clock` is wall time (outbox ages survive restarts); tests pass their own."""

    def __init__(
        self,
        analyzer: Analyzer,
        destination: Destination,
        spool: Spool,
        settings: ListenerSettings | None = None,
        report: Callable[[str], None] = log.info,
        sender: Callable = send,
        clock: Callable[[], float] = time.time,
    ):
        s = settings or ListenerSettings()
        self.analyzer, self.destination, self.spool = analyzer, destination, spool
        self.ae_title = check_ae_title(s.ae_title)
        self.host, self.port = s.host, s.port
        self.batch_size, self.retry_for = max(1, s.batch_size), s.retry_for
        self.sop_classes = accepted_sop_classes(s.secondary_capture)
        self.report, self.sender, self.clock = report, sender, clock
        self.retry_base, self.retry_cap = s.retry_base, s.retry_cap
        self.stats = ListenerStats()
        self.last_error = ""
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._work, self._deliver = threading.Event(), threading.Event()
        self._next_try: dict[str, float] = {}
        self._destination_failures = 0
        self._destination_next_try = 0.0
        self._status_written = 0.0
        self._server = None
        self._threads: list[threading.Thread] = []
        self.started = clock()

    def _count(self, counter: str) -> None:
        with self._lock:
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)

    def _note(self, line: str, counter: str | None = None) -> None:
        if counter:
            self._count(counter)
        self.report(line)

    # -- receiving -------------------------------------------------------------------------
    def handle_store(self, event) -> int:
        """EVT_C_STORE: write a CR/DX image to the spool, then answer Success (see the module)."""
        self._count("received")
        try:
            ds = event.dataset
            modality = str(ds.get("Modality", "")).upper()
            ref = image_ref(repaired_uid(ds))
        except Exception as err:  # noqa: BLE001 - a peer's bad data set is its problem
            self._note(
                f"refused an object that cannot be decoded ({type(err).__name__})", "refused"
            )
            return CANNOT_UNDERSTAND
        if modality not in CHEST_RADIOGRAPH_MODALITIES:
            self._note(
                f"{ref}: refused a {modality or 'no-modality'} object "
                f"({NOT_A_CHEST_RADIOGRAPH:#06x}): only CR and DX images are analysed",
                "refused",
            )
            return NOT_A_CHEST_RADIOGRAPH
        try:
            self.spool.receive(event.encoded_dataset(), ref)
        except (SpoolFull, OSError) as err:
            self._note(
                f"{ref}: refused (0xA700, out of resources; the sender keeps it and may retry): "
                f"{err}",
                "refused",
            )
            return OUT_OF_RESOURCES
        self._work.set()
        return SUCCESS

    # -- analysing -------------------------------------------------------------------------
    def analyse_queued(self) -> int:
        """Analyse one batch of the oldest queued instances; how many were taken."""
        receipts = self.spool.queued()[: self.batch_size]
        blobs, taken = [], []
        for receipt in receipts:
            try:
                blobs.append(self.spool.instance(receipt).read_bytes())
                taken.append(receipt)
            except OSError as err:
                self._note(f"{receipt}: cannot read the spooled instance: {err}")
        for receipt, outcome in zip(taken, self.analyzer.analyse(blobs), strict=True):
            if isinstance(outcome, ImageFailure):
                self.fail(receipt, describe(outcome))
                continue
            try:
                results = [(str(ds.Modality), dataset_to_bytes(ds)) for ds in outcome.outputs]
                self.spool.to_outbox(receipt, results, describe(outcome))
            except OSError:
                raise  # the spool's disk: the instance stays queued (see analysis_loop)
            except Exception as err:  # noqa: BLE001 - this image's results cannot be encoded
                self.fail(receipt, f"{outcome.ref}: results not written: {type(err).__name__}")
                continue
            self._count("analysed")
            self._deliver.set()
        return len(receipts)

    def fail(self, receipt: str, reason: str) -> None:
        self.spool.fail_queued(receipt, reason)
        self._note(f"{reason} -> moved to failed/", "failed")

    def analysis_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                taken = self.analyse_queued()
            except OSError as err:  # e.g. a full disk: the instances stay queued
                self._note(f"analysis paused for 10 s: cannot write to the spool: {err}")
                self._stopping.wait(10)
                continue
            except Exception as err:  # noqa: BLE001 - a bug must not stop the worker silently
                self._note(f"analysis paused for 10 s after an unexpected error (a bug): {err!r}")
                self._stopping.wait(10)
                continue
            self.write_status()
            if not taken:
                self._work.wait(1.0)
                self._work.clear()

    # -- delivering ------------------------------------------------------------------------
    def deliver_due(self) -> int:
        """Try every outbox item that is due, oldest first; how many were delivered."""
        now = self.clock()
        if now < self._destination_next_try:
            return 0
        delivered = 0
        for receipt in self.spool.pending():
            if self._stopping.is_set():
                break
            if self._next_try.get(receipt, 0.0) > now:
                continue
            outcome = self.deliver(self.spool.item(receipt))
            if outcome == "unreachable":
                break
            delivered += outcome == "sent"
        return delivered

    def deliver(self, item: OutboxItem) -> str:
        """C-STORE one item's results: 'sent', 'refused' (retried later) or 'unreachable'."""
        import pydicom

        try:
            datasets = [pydicom.dcmread(path) for path in item.results]
            self.sender(datasets, self.destination, self.ae_title)
        except Exception as err:  # noqa: BLE001 - every failure is retried, then failed/
            return self.delivery_failed(item, err)
        self.spool.delivered(item.receipt)
        self._next_try.pop(item.receipt, None)
        self._destination_failures, self._destination_next_try = 0, 0.0
        self._note(f"{item.summary} -> sent to {self.destination}", "sent")
        return "sent"

    def delivery_failed(self, item: OutboxItem, err: Exception) -> str:
        error = str(err) if isinstance(err, SendFailed) else f"{type(err).__name__}: {err}"
        self.last_error = error
        self.spool.record_attempt(item, error)
        now = self.clock()
        unreachable = isinstance(err, DestinationUnreachable)
        if unreachable:
            self._destination_failures += 1
            wait = backoff(self._destination_failures, self.retry_base, self.retry_cap)
            self._destination_next_try = now + wait
            self.expire(now, error)
        else:
            wait = backoff(item.attempts, self.retry_base, self.retry_cap)
            self._next_try[item.receipt] = now + wait
            if now - item.created >= self.retry_for:
                self.give_up(item, error)
                return "refused"
        self._note(
            f"{receipt_ref(item.receipt)}: not sent to {self.destination} (attempt "
            f"{item.attempts}): {error}; next try in {duration(wait)}"
        )
        return "unreachable" if unreachable else "refused"

    def expire(self, now: float, error: str) -> None:
        """The destination is unreachable: every item older than retry_for goes to failed/."""
        for receipt in self.spool.pending():
            item = self.spool.item(receipt)
            if now - item.created >= self.retry_for:
                self.give_up(item, error)

    def give_up(self, item: OutboxItem, error: str) -> None:
        attempts = max(1, item.attempts)
        reason = (
            f"{item.summary}\nnot delivered to {self.destination} within "
            f"{duration(self.retry_for)} (--retry-for), {attempts} attempts; last error: {error}"
        )
        self.spool.fail_pending(item.receipt, reason)
        self._next_try.pop(item.receipt, None)
        self._note(
            f"{receipt_ref(item.receipt)}: gave up after {duration(self.retry_for)} and "
            f"{attempts} attempts -> moved to failed/: {error}",
            "failed",
        )

    def delivery_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.deliver_due()
            except OSError as err:
                self._note(f"delivery paused for 10 s: cannot update the spool: {err}")
                self._stopping.wait(10)
            except Exception as err:  # noqa: BLE001 - a bug must not stop the worker silently
                self._note(f"delivery paused for 10 s after an unexpected error (a bug): {err!r}")
                self._stopping.wait(10)
            self.write_status()
            self._deliver.wait(1.0)
            self._deliver.clear()

    # -- status ----------------------------------------------------------------------------
    def status(self) -> dict:
        counts = self.spool.counts()
        return {
            "pid": os.getpid(),
            "ae_title": self.ae_title,
            "address": f"{self.host}:{self.port}",
            "destination": str(self.destination),
            "model": self.analyzer.model_name,
            "retry_for_s": self.retry_for,
            "started": self.started,
            "updated": self.clock(),
            "queued": counts.queued,
            "pending_delivery": counts.pending,
            "failed": counts.failed,
            "used_bytes": self.spool.used_bytes,
            "max_bytes": self.spool.max_bytes,
            "last_delivery_error": self.last_error,
            "destination_next_try": self._destination_next_try or None,
            "since_start": vars(self.stats),
        }

    def write_status(self, force: bool = False) -> None:
        """status.json, at most once a second (it is read by `ptxseg listen-status`)."""
        with self._lock:
            if not force and time.monotonic() - self._status_written < 1.0:
                return
            self._status_written = time.monotonic()
        with contextlib.suppress(OSError):  # the folders' counts stay true; the next may succeed
            self.spool.write_status(self.status())

    # -- running ---------------------------------------------------------------------------
    def start(self) -> Listener:
        """Start the workers (they take what the spool holds first), then the SCP."""
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = True
        ae.add_supported_context(Verification)
        for sop_class in self.sop_classes:
            ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        self._stopping.clear()
        for name, target in (("analysis", self.analysis_loop), ("delivery", self.delivery_loop)):
            thread = threading.Thread(target=target, name=f"ptxseg-listen-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._server = ae.start_server(
            (self.host, self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self.handle_store)],
        )
        self.write_status(force=True)
        return self

    def stop(self, timeout: float | None = 60.0) -> None:
        """Stop accepting images and stop the workers after their current step. What is not
        done stays in the spool for the next start."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self._stopping.set()
        self._work.set()
        self._deliver.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []
        self.write_status(force=True)

    def __enter__(self) -> Listener:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class CannotListen(RuntimeError):
    """The listener's port could not be opened (in use, or not allowed)."""


def run_listener(listener: Listener, stop: threading.Event) -> None:
    """Run `listener` until `stop` is set, reporting the spool before and after: what is left is
    taken up at the next start. CannotListen (the spool closed) when the port cannot be opened."""
    report, store = listener.report, listener.spool
    counts = store.counts()
    report(
        f"spool {store.root}: {counts.queued} queued, {counts.pending} pending delivery, "
        f"{counts.failed} failed" + (" (taken first)" if counts.queued + counts.pending else "")
    )
    try:
        listener.start()
    except OSError as err:
        store.close()
        raise CannotListen(f"cannot listen on {listener.host}:{listener.port}: {err}") from None
    report(
        f"listening on {listener.host}:{listener.port} as {listener.ae_title}; "
        f"{listener.analyzer.model_name}; SEG and SR go to {listener.destination}, retried for "
        f"{duration(listener.retry_for)}. Ctrl-C stops."
    )
    stop.wait()
    report("stopping after the current step")
    listener.stop()
    counts = store.counts()
    store.close()
    report(
        f"{listener.stats.line()}; in the spool: {counts.queued} queued, {counts.pending} "
        f"pending delivery (taken up at the next start), {counts.failed} failed"
    )
