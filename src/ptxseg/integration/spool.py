"""The listener's spool: what a modality handed over, kept on disk until its results are delivered.

Store, then acknowledge. A received instance is written under a temporary name, fsynced, renamed
and its folder fsynced before the C-STORE is answered Success; from then on every step moves it
by renames (each followed by an fsync of the folders), so a `kill -9` or a power cut at any moment
leaves it in exactly one place, and a restart goes on from there:

    SPOOL/
      lock            held (flock) by the one listener that uses this spool
      status.json     what the listener last reported (for `ptxseg listen-status`)
      incoming/       <receipt>.dcm: received, not analysed yet
      outbox/         <receipt>/: instance.dcm, the results (1-SEG.dcm, 2-SR.dcm), state.json
                      (when it was analysed, delivery attempts, the last error)
      failed/         <receipt>/: instance.dcm (and the results, if any), reason.txt

An instance leaves the spool only when its results are delivered (the outbox item is removed) or
when it is moved to `failed/` with the reason. A receipt is `<nanoseconds>-<image ref>`: arrival
order, unique even when a modality sends the same instance twice, and no patient identifier.
Folders are owner-only (0700) and files 0600: they hold patient data.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptxseg.util.jsonio import read_json

INCOMING, OUTBOX, FAILED = "incoming", "outbox", "failed"
LOCK, STATUS = "lock", "status.json"
INSTANCE, STATE, REASON = "instance.dcm", "state.json", "reason.txt"
BUILD, DONE = ".build-", ".done-"
FREE_DISK_RESERVE = 32 * 1024 * 1024  # left free so that results can still be written
APP_STATE = "ptxseg"


class SpoolBusy(RuntimeError):
    """Another listener holds the spool's lock."""


class SpoolFull(RuntimeError):
    """Accepting the instance would pass `--spool-max-gb` or fill the disk."""


def state_home(environ: dict[str, str] | None = None) -> Path:
    """The user's state directory: $XDG_STATE_HOME, else ~/.local/state (XDG base directories)."""
    env = os.environ if environ is None else environ
    value = env.get("XDG_STATE_HOME", "")
    if value and Path(value).is_absolute():  # the spec says: relative paths are ignored
        return Path(value)
    return Path(env.get("HOME") or Path.home()) / ".local" / "state"


def default_spool(ae_title: str, port: int, environ: dict[str, str] | None = None) -> Path:
    """<state dir>/ptxseg/listen/<AE title>-<port>: one spool per listening AE."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in ae_title.strip())
    return state_home(environ) / APP_STATE / "listen" / f"{safe}-{port}"


def fsync_folder(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes, sync: bool = True) -> None:
    """Write `data` to `path` (0600) under a temporary name, fsync it, rename it, fsync the folder.

    After this returns, the file is on disk with its full content; before, `path` holds its old
    content or does not exist (a temporary `.<name>.<pid>.<thread>.tmp` may be left by a crash)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync:
        fsync_folder(path.parent)


def move(source: Path, target: Path) -> None:
    """Rename, then fsync both folders, so that the move survives a power cut."""
    os.replace(source, target)
    fsync_folder(target.parent)
    if source.parent != target.parent:
        fsync_folder(source.parent)


def make_private_folder(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)


def tree_size(path: Path) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


@dataclass
class OutboxItem:
    """One analysed instance waiting for delivery: its results, in the order they are sent."""

    receipt: str
    folder: Path
    results: list[Path]
    state: dict[str, Any]

    @property
    def created(self) -> float:
        return float(self.state.get("created", 0.0))

    @property
    def attempts(self) -> int:
        return int(self.state.get("attempts", 0))

    @property
    def summary(self) -> str:
        return str(self.state.get("summary") or self.receipt)


@dataclass
class Counts:
    queued: int
    pending: int
    failed: int
    oldest_queued: float | None
    oldest_pending: float | None


class Spool:
    """A spool folder (see the module docstring). `open()` takes the lock and finishes what a
    crash interrupted; every method after that is safe to call from several threads for
    different receipts (one thread analyses, one delivers, the C-STORE handlers receive)."""

    def __init__(self, root: str | Path, max_bytes: int | None = None):
        self.root = Path(root).expanduser().absolute()
        self.max_bytes = max_bytes
        self.incoming, self.outbox, self.failed = (
            self.root / n for n in (INCOMING, OUTBOX, FAILED)
        )
        self._lock_fd: int | None = None
        self._guard = threading.Lock()
        self._used = 0
        self._counter = 0
        self._measured = 0.0
        self.recovered: dict[str, int] = {}

    # -- opening ---------------------------------------------------------------------------
    def open(self, owner: str = "") -> Spool:
        """Create the folders (0700), take the lock (SpoolBusy when held), recover."""
        make_private_folder(self.root)
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise SpoolBusy(
                f"spool {self.root} is in use by another listener ({holder}): stop it, or give "
                "this one its own --spool"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} {owner}".strip().encode(), 0)
        self._lock_fd = fd
        for folder in (self.incoming, self.outbox, self.failed):
            make_private_folder(folder)
        self.recovered = self.recover()
        self._used = tree_size(self.root)
        self._measured = time.monotonic()
        return self

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self) -> Spool:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def recover(self) -> dict[str, int]:
        """Finish or undo the steps a crash interrupted; what was done, by kind (for the log)."""
        done = {"unacknowledged": 0, "completed": 0, "undone": 0}
        for tmp in self.incoming.glob(".*.tmp"):  # never answered Success
            tmp.unlink(missing_ok=True)
            done["unacknowledged"] += 1
        for folder in (self.outbox, self.failed):
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
        for done_item in self.outbox.glob(f"{DONE}*"):  # delivered, removal interrupted
            shutil.rmtree(done_item, ignore_errors=True)
        for build in self.outbox.glob(f"{BUILD}*"):  # results half written: analyse again
            shutil.rmtree(build, ignore_errors=True)
            done["undone"] += 1
        for build in self.failed.glob(f"{BUILD}*"):
            receipt = build.name[len(BUILD) :]
            if (build / INSTANCE).exists():
                move(build, self.failed / receipt)
                done["completed"] += 1
            else:  # the instance is still where it was
                shutil.rmtree(build, ignore_errors=True)
                done["undone"] += 1
        for item in self.outbox.iterdir():  # results in place, instance not yet moved in
            waiting = self.incoming / f"{item.name}.dcm"
            if not item.name.startswith(".") and waiting.exists():
                move(waiting, item / INSTANCE)
                done["completed"] += 1
        return done

    # -- receiving -------------------------------------------------------------------------
    def new_receipt(self, ref: str) -> str:
        with self._guard:
            self._counter += 1
            return f"{time.time_ns():020d}{self._counter % 1000:03d}-{ref}"

    def check_room(self, size: int) -> None:
        """SpoolFull when `size` more bytes pass --spool-max-gb or leave the disk almost full."""
        free = shutil.disk_usage(self.root).free
        if free < size + FREE_DISK_RESERVE:
            raise SpoolFull(
                f"the disk holding {self.root} has {free / 1e6:.0f} MB free, less than this "
                f"image plus a reserve of {FREE_DISK_RESERVE / 1e6:.0f} MB"
            )
        if self.max_bytes is None:
            return
        with self._guard:
            if self._used + size > self.max_bytes and time.monotonic() - self._measured > 5:
                self._used = tree_size(self.root)  # an operator may have purged failed/
                self._measured = time.monotonic()
            if self._used + size > self.max_bytes:
                raise SpoolFull(
                    f"the spool holds {self._used / 1e9:.3g} GB, the limit (--spool-max-gb) is "
                    f"{self.max_bytes / 1e9:.3g} GB"
                )

    def receive(self, blob: bytes, ref: str) -> str:
        """Store a received instance durably; its receipt. SpoolFull or OSError: not stored."""
        self.check_room(len(blob))
        receipt = self.new_receipt(ref)
        write_durable(self.incoming / f"{receipt}.dcm", blob)
        self._grow(len(blob))
        return receipt

    def _grow(self, size: int) -> None:
        with self._guard:
            self._used += size

    @property
    def used_bytes(self) -> int:
        return self._used

    # -- analysing -------------------------------------------------------------------------
    def queued(self) -> list[str]:
        """Receipts waiting for analysis, oldest first."""
        return sorted(
            p.name[:-4] for p in self.incoming.iterdir() if p.suffix == ".dcm" and p.name[0] != "."
        )

    def instance(self, receipt: str) -> Path:
        return self.incoming / f"{receipt}.dcm"

    def to_outbox(self, receipt: str, results: list[tuple[str, bytes]], summary: str) -> None:
        """Write the results (kind, Part-10 bytes; sent in this order) and move the instance in."""
        if not self.instance(receipt).exists():
            raise FileNotFoundError(f"{self.instance(receipt)} is no longer in the spool")
        build = self.outbox / f"{BUILD}{receipt}"
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir(mode=0o700)
        for index, (kind, blob) in enumerate(results, start=1):
            write_durable(build / f"{index}-{kind}.dcm", blob, sync=False)
        state = {"created": time.time(), "attempts": 0, "summary": summary}
        write_durable(build / STATE, json.dumps(state).encode(), sync=False)
        for path in build.iterdir():  # one fsync pass over the finished files
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_folder(build)
        item = self.outbox / receipt
        move(build, item)
        move(self.instance(receipt), item / INSTANCE)
        self._grow(sum(len(blob) for _, blob in results))

    def fail_queued(self, receipt: str, reason: str) -> None:
        """Move a received instance that cannot be analysed to failed/, with the reason."""
        build = self.failed / f"{BUILD}{receipt}"
        build.mkdir(mode=0o700, exist_ok=True)
        write_durable(build / REASON, reason_text("analysis", reason))
        move(self.instance(receipt), build / INSTANCE)
        move(build, self.failed / receipt)

    # -- delivering ------------------------------------------------------------------------
    def pending(self) -> list[str]:
        """Receipts of the outbox items, oldest first."""
        return sorted(p.name for p in self.outbox.iterdir() if p.name[0] != ".")

    def item(self, receipt: str) -> OutboxItem:
        folder = self.outbox / receipt
        results = sorted(p for p in folder.glob("[0-9]*-*.dcm"))
        return OutboxItem(receipt, folder, results, read_json(folder / STATE, default={}))

    def record_attempt(self, item: OutboxItem, error: str) -> None:
        """Count a failed delivery attempt and keep its error in the item's state."""
        item.state.update(attempts=item.attempts + 1, last_error=error, last_attempt=time.time())
        write_durable(item.folder / STATE, json.dumps(item.state).encode())

    def delivered(self, receipt: str) -> None:
        """The destination has every result: the instance leaves the spool."""
        folder = self.outbox / receipt
        size = tree_size(folder)
        gone = self.outbox / f"{DONE}{receipt}"
        move(folder, gone)
        shutil.rmtree(gone, ignore_errors=True)
        self._grow(-size)

    def fail_pending(self, receipt: str, reason: str) -> None:
        """Move an outbox item (instance and results) to failed/, with the reason."""
        folder = self.outbox / receipt
        write_durable(folder / REASON, reason_text("delivery", reason))
        move(folder, self.failed / receipt)

    # -- looking ---------------------------------------------------------------------------
    def failures(self) -> list[str]:
        return sorted(p.name for p in self.failed.iterdir() if p.name[0] != ".")

    def reason(self, receipt: str) -> str:
        try:
            return (self.failed / receipt / REASON).read_text(errors="replace")
        except OSError:
            return ""

    def counts(self) -> Counts:
        queued, pending = self.queued(), self.pending()
        return Counts(
            queued=len(queued),
            pending=len(pending),
            failed=len(self.failures()),
            oldest_queued=receipt_time(queued[0]) if queued else None,
            oldest_pending=receipt_time(pending[0]) if pending else None,
        )

    def write_status(self, status: dict[str, Any]) -> None:
        """status.json: what the listener reports (atomic, not fsynced: it is rebuilt often)."""
        write_durable(self.root / STATUS, json.dumps(status, indent=1).encode(), sync=False)

    def read_status(self) -> dict[str, Any]:
        return read_json(self.root / STATUS, default={})

    def locked(self) -> bool:
        """Whether a listener holds this spool's lock now (checked without taking it)."""
        try:
            fd = os.open(self.root / LOCK, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False


def receipt_time(receipt: str) -> float:
    """When a receipt was made (seconds since the epoch)."""
    return int(receipt.split("-", 1)[0][:-3]) / 1e9


def receipt_ref(receipt: str) -> str:
    """The image ref (`analysis.image_ref`) that a receipt carries."""
    return receipt.split("-", 1)[-1]


def reason_text(stage: str, reason: str) -> bytes:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %z")
    return f"{stage} failed at {stamp}\n{reason}\n".encode()


def is_spool(path: Path) -> bool:
    return all((path / name).is_dir() for name in (INCOMING, OUTBOX, FAILED))


def iter_reasons(spool: Spool, limit: int) -> Iterator[tuple[str, str]]:
    """(receipt, reason) of the newest `limit` failed items."""
    for receipt in spool.failures()[::-1][:limit]:
        yield receipt, spool.reason(receipt)
