"""What the PACS commands (`dicomweb`, `listen`) print and how they stop: time-stamped log lines
without rich markup (they quote server text), errors with secrets scrubbed, library warnings kept
off the terminal, and Ctrl-C or SIGTERM that ends the loop after the current step."""

from __future__ import annotations

import datetime
import logging
import signal
import threading
import warnings


def quiet_pacs_libraries() -> None:
    """Library warnings quote header values verbatim (identifiers); the findings carry them."""
    for name in ("pydicom", "highdicom", "pynetdicom", "dicomweb_client", "retrying"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(pydicom|highdicom)\..*")
    from ptxseg.data.dicom import DicomHeaderWarning
    from ptxseg.inference.seg import InvalidSourceUIDWarning

    warnings.filterwarnings("ignore", category=DicomHeaderWarning)
    warnings.filterwarnings("ignore", category=InvalidSourceUIDWarning)


def print_error(console, text: str, scrub=lambda text: text) -> None:
    """An error line (its text scrubbed of secrets) on `console`."""
    from rich.text import Text

    console.print(Text("error: ", style="red") + Text(scrub(text)), soft_wrap=True)


def timestamped_reporter(console, scrub=lambda text: text):
    """Log lines with the time, unwrapped and without rich markup (they quote server text)."""

    def report(line: str) -> None:
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        console.print(f"{stamp} {scrub(line)}", markup=False, highlight=False, soft_wrap=True)

    return report


def stop_on_signals(stop: threading.Event) -> None:
    """Ctrl-C or SIGTERM ends the loop after the current step; a second one ends it at once."""

    def handler(signum, frame):  # noqa: ARG001 - signal handler signature
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
