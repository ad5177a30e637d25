#!/usr/bin/env bash
# Install what the browser test (tests/test_browser.py, `make test-browser`) needs:
# Debian's chromium from apt and the Playwright Python package into the project's virtualenv.
# Playwright drives /usr/bin/chromium directly; `playwright install` (a browser download) is
# never run. Needs root (or sudo) for apt.
set -euo pipefail

VENV="${VENV:-.venv}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if [ ! -x /usr/bin/chromium ]; then
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends chromium
fi
# Playwright comes with the lock (requirements/dev.txt, the browser extra).

/usr/bin/chromium --version
"$VENV/bin/python" -c "import playwright.sync_api; print('playwright for Python: ok')"
