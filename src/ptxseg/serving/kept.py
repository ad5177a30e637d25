"""The folder of kept uploads (`serve --keep-uploads`): checked at start, owner-only.

Kept uploads are patient data. The folder is created readable by its owner only (0700), every
file is written owner-only (0600) under a temporary name and renamed, and the folder is checked
for writing when the service starts, so a folder it cannot write is one line and exit 2 rather
than a service that answers every upload with an error.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from ptxseg.util import atomic

FOLDER_MODE = 0o700
FILE_MODE = 0o600


class KeepFolderError(ValueError):
    """The kept-uploads folder cannot be created or written; the message says what to do."""


def open_keep_folder(folder: Path) -> Path:
    """Create `folder` (0700) if needed and prove that a file can be written there."""
    folder = Path(folder)
    try:
        folder.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".ptxseg-write-check."):
            pass
    except OSError as err:
        raise KeepFolderError(
            f"--keep-uploads {folder}: cannot write there ({err.strerror or err}); choose a "
            "folder this user can write, or leave the option out to keep nothing"
        ) from None
    return folder


def others_can_read(folder: Path) -> bool:
    """True when the folder lets users other than its owner list or enter it."""
    return bool(Path(folder).stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))


def keep(folder: Path, name: str, data: bytes) -> Path:
    """Write one upload owner-only, atomically, as `folder/name`."""

    def write(handle) -> None:
        os.fchmod(handle.fileno(), FILE_MODE)
        handle.write(data)

    return atomic.write_through(Path(folder) / name, write, binary=True)
