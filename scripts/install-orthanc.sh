#!/usr/bin/env bash
# Install what the PACS tests (tests/integration/test_orthanc.py, `make test-pacs`) need: Debian's
# Orthanc and its DICOMweb plugin. The tests start their own Orthanc on free ports with a
# temporary configuration; the system service that the package sets up is not used (where the
# package starts it, it listens on 8042/4242). Does nothing when both are present. Needs root
# (or sudo) for apt.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

have_orthanc() {
    command -v Orthanc > /dev/null || [ -x /usr/sbin/Orthanc ]
}
have_plugin() {
    compgen -G "/usr/share/orthanc/plugins/libOrthancDicomWeb.so*" > /dev/null
}

if ! have_orthanc || ! have_plugin; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        orthanc orthanc-dicomweb > /dev/null
fi

orthanc_bin="$(command -v Orthanc || echo /usr/sbin/Orthanc)"
echo "Orthanc: $("$orthanc_bin" --version | head -1)"
have_plugin && echo "Orthanc DICOMweb plugin: ok"
