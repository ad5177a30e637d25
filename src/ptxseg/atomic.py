"""Atomic file writes: a temporary name in the same folder, then `os.replace`.

Every output of ptxseg goes through here, so an interrupted command or bad input never leaves a
half-written file that a rerun would trust.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any


def write_through(path: str | Path, write: Callable[[IO[Any]], Any], binary: bool = False) -> Path:
    """Call `write(file)` on a temporary file beside `path`, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", newline=None if binary else "") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
    mix (between the two renames there is a moment with neither).
    """
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    old = None
    try:
        fill(tmp)
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
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path
