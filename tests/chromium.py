"""Debian's chromium for the browser tests, with the flags a closed network needs."""

import shutil

# Without the background-networking flags chromium keeps calling hosts this network refuses.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def find() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")
