"""Atomic file writes: a temporary name in the same folder, then `os.replace`.

Every output of ptxseg goes through here, so an interrupted command or bad input never leaves a
half-written file that a rerun would trust. The temporary file is fsynced before the rename and
its folder after it, so a power cut too leaves either the old file or the new one, and a file
that was reported written is on the disk. Which paths a command may write at all is
`ptxseg.util.path_guard`'s business.
"""

from __future__ import annotations

import csv
import errno
import io
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any


def sync_folder(folder: str | Path) -> None:
    """fsync a folder, so that the renames and new names in it survive a power cut."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as err:  # some filesystems (and Windows) cannot sync a folder
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def replace(tmp: str | Path, path: str | Path) -> Path:
    """Move a finished, closed temporary file onto `path`: fsync it, rename it, fsync the folder.

    For writers that make their own temporary file (memory-mapped arrays)."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    sync_folder(Path(path).parent)
    return Path(path)


def write_through(path: str | Path, write: Callable[[IO[Any]], Any], binary: bool = False) -> Path:
    """Call `write(file)` on a temporary file beside `path`, then rename it to `path`: the file
    is fsynced before the rename and the folder after it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise _naming(err, path) from err
    try:
        with os.fdopen(fd, "wb" if binary else "w", newline=None if binary else "") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise _naming(err, path, tmp) from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    sync_folder(path.parent)
    return path


def _naming(err: OSError, path: Path, tmp: str | None = None) -> OSError:
    """The error with the file it was writing named as the user knows it (not its temporary
    name): a full disk at summary.csv says summary.csv."""
    if tmp is not None and err.filename not in (None, tmp):
        return err
    return OSError(err.errno, err.strerror or str(err), str(path))


def write_bytes(path: str | Path, data: bytes) -> Path:
    return write_through(path, lambda f: f.write(data), binary=True)


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_if_changed(path: str | Path, data: bytes | str) -> bool:
    """Write only when the content differs (a rerun then leaves files and their times alone)."""
    path = Path(path)
    blob = data.encode("utf-8") if isinstance(data, str) else data
    if path.is_file() and path.read_bytes() == blob:
        return False
    write_bytes(path, blob)
    return True


def write_csv(path: str | Path, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> Path:
    """A CSV with a header of `columns`; keys outside them are ignored, missing ones left empty."""
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    return write_text(path, buffer.getvalue())


def save_figure(fig: Any, path: str | Path, **savefig: Any) -> Path:
    """Save a matplotlib figure as PNG atomically, then close it."""
    import matplotlib.pyplot as plt

    try:
        return write_through(path, lambda f: fig.savefig(f, format="png", **savefig), binary=True)
    finally:
        plt.close(fig)


def write_folder(path: str | Path, fill: Callable[[Path], Any]) -> Path:
    """Call `fill(folder)` on a temporary folder beside `path`, then put it in place of `path`.

    An existing folder at `path` is replaced whole; readers see the old or the new one, never a
    mix (between the two renames there is a moment with neither). Every file that `fill` wrote is
    fsynced before the folder takes its place, and the parent folder after.
    """
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = None
    try:
        fill(tmp)
        sync_tree(tmp)
        if path.exists():
            if not path.is_dir():
                raise FileExistsError(f"{path} exists and is not a folder: choose another path")
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.rmdir(old)
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not path.exists():
            os.replace(old, path)
        raise
    sync_folder(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


def sync_tree(folder: str | Path) -> None:
    """fsync every file and folder under `folder` (bottom up), and `folder` itself."""
    for root, _, files in os.walk(folder, topdown=False):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        sync_folder(root)
