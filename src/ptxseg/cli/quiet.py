"""Third-party banners, tips and deprecation warnings kept off a user's terminal, in one place.

A plain `ptxseg train` used to print Lightning's "GPU available / TPU available" lines, its
"💡 Tip" advertisement for a cloud logger, "`Trainer.fit` stopped: `max_epochs=N` reached" and a
deprecation warning that torch raises inside Lightning; `export --int8` printed ONNX Runtime's
advice to pre-process before quantising; `predict --seg` printed highdicom's doubts about a
source file's patient name (the name included) from its writer processes. A user can act on none
of them. ptxseg says what it did in its own lines, and records the device, versions and header
problems in its outputs (`train_summary.json`, `run.json`, the findings, `unmatched.json`).

What stays: every warning ptxseg raises (`DicomHeaderWarning`, `OperatingPointWarning`, its own
deprecations, ...), every error, and third-party warnings that are not deprecations, except the
DICOM libraries' remarks on header values, which ptxseg reports itself.

`quiet_third_party()` runs before every command (the root callback in `ptxseg.cli.app`). It
imports nothing heavy: Lightning and the others are not imported yet when it runs, so it sets
what they read when they are (logger levels below the ones Lightning resets on import, warning
filters, and `PYTHONWARNINGS` for the worker processes a command starts). One exception: Lightning
turns its own `LightningDeprecationWarning` back on when it is imported; those name a Lightning
API that ptxseg's code calls, and are fixed there.
"""

from __future__ import annotations

import logging
import os
import warnings

# Loggers whose INFO records are banners and notes: "GPU available", "TPU available", the
# litlogger / litmodels tips, "`Trainer.fit` stopped", "LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES",
# "Initializing distributed", AMP notes. Lightning sets its package loggers to INFO when it is
# imported, so the level is set on the modules' own loggers, which it leaves alone.
BANNER_LOGGERS = tuple(
    f"{package}.{module}"
    for package in (
        "lightning.pytorch",
        "lightning.fabric",
        "pytorch_lightning",
        "lightning_fabric",
    )
    for module in ("utilities.rank_zero", "utilities.distributed", "accelerators.cuda")
)

# Root-logger records of libraries that log through `logging.warning(...)` directly.
ROOT_LOGGER_LIBRARIES = ("onnxruntime",)

DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)

# The DICOM libraries' remarks on a file's header values (they quote the values, names
# included); ptxseg reports invalid header values itself, per image, without identifiers.
DICOM_LIBRARIES = r"(pydicom|highdicom)(\..*)?$"

# For child processes (reader, writer and benchmark workers): `-W` syntax, literal module names.
CHILD_WARNING_OPTIONS = (
    "ignore::DeprecationWarning",
    "ignore::PendingDeprecationWarning",
    "ignore::FutureWarning",
    "ignore::UserWarning:highdicom.base",
    "ignore::UserWarning:pydicom.valuerep",
)


class _FromLibraries(logging.Filter):
    """Drops records logged on the root logger from inside the named libraries."""

    def __init__(self, libraries: tuple[str, ...]) -> None:
        super().__init__()
        self.markers = tuple(f"{os.sep}{name}{os.sep}" for name in libraries)

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(marker in record.pathname for marker in self.markers)


def quiet_third_party() -> None:
    """Silence third-party banners, tips and deprecation warnings for this process and its
    children. Idempotent; ptxseg's own warnings and every error still reach the terminal."""
    for name in BANNER_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    root = logging.getLogger()
    if not any(isinstance(f, _FromLibraries) for f in root.filters):
        root.addFilter(_FromLibraries(ROOT_LOGGER_LIBRARIES))
    for category in DEPRECATIONS:
        # Any module but ptxseg's own: its deprecations are meant for the user.
        warnings.filterwarnings("ignore", category=category, module=r"(?!ptxseg(\.|$))")
    warnings.filterwarnings("ignore", category=UserWarning, module=DICOM_LIBRARIES)
    options = [o for o in os.environ.get("PYTHONWARNINGS", "").split(",") if o]
    missing = [o for o in CHILD_WARNING_OPTIONS if o not in options]
    if missing:
        os.environ["PYTHONWARNINGS"] = ",".join([*options, *missing])
