"""dicom3tools' dciodvfy, the DICOM validator, for the conformance tests.

`scripts/install-dicom3tools.sh` installs it from Debian (`make test-conformance`); tests skip with
that hint where it is absent. `KNOWN_WARNINGS` are the warnings that stay on ptxseg's outputs, each
with its reason; docs/conformance.md lists the same ones.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

KNOWN_WARNINGS = {
    r"Missing attribute or value that would be needed to build DICOMDIR": (
        "the source has no Study ID (or Patient ID); a derived object copies the study's "
        "identifiers and does not invent them"
    ),
    r"Unrecognized defined term = <99PTXSEG>": (
        "the local codes of the SR (sr.LOCAL_CODES), declared in the Coding Scheme "
        "Identification Sequence"
    ),
    r"Retired Person Name form": (
        "SIIM's Patient's Name is a UUID without '^' between its components; a name is copied "
        "as it is, since splitting it is not a certain repair"
    ),
    r"ViewPosition\(0018,5101\)> - Attribute is not present in standard DICOM IOD": (
        "repair-uids copies a Secondary Capture image with the View Position its source has"
    ),
}


def binary() -> str | None:
    return shutil.which("dciodvfy")


def require() -> str:
    found = binary()
    if found is None:
        pytest.skip(
            "dciodvfy (dicom3tools) is not installed: run scripts/install-dicom3tools.sh "
            "(Debian package dicom3tools), or `make test-conformance`"
        )
    return found


@dataclass
class Verdict:
    path: Path
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def unknown_warnings(self) -> list[str]:
        return [w for w in self.warnings if not any(re.search(k, w) for k in KNOWN_WARNINGS)]


def validate(path: Path) -> Verdict:
    """dciodvfy's errors and warnings for one file."""
    done = subprocess.run(
        [require(), "-new", str(path)], capture_output=True, text=True, errors="replace"
    )
    lines = (done.stdout + done.stderr).splitlines()
    verdict = Verdict(path)
    verdict.errors = [line for line in lines if line.startswith("Error")]
    verdict.warnings = [line for line in lines if line.startswith("Warning")]
    return verdict


def summary(verdicts: list[Verdict]) -> str:
    """'N files, E errors (in F files), W warnings' for a table."""
    with_errors = sum(bool(v.errors) for v in verdicts)
    errors = sum(len(v.errors) for v in verdicts)
    warnings = sum(len(v.warnings) for v in verdicts)
    return f"{len(verdicts)} files, {errors} errors (in {with_errors} files), {warnings} warnings"
