#!/usr/bin/env bash
# Install what the conformance tests (tests/test_conformance.py, `make test-conformance`) need:
# dciodvfy, the DICOM validator of Debian's dicom3tools package. Does nothing when it is present.
# Needs root (or sudo) for apt.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if ! command -v dciodvfy > /dev/null; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        dicom3tools > /dev/null
fi
echo "dciodvfy: $(dpkg-query -W -f='${Package} ${Version}' dicom3tools 2>/dev/null || echo present)"
