#!/usr/bin/env bash
# Install what the PACS tests (tests/integration/test_orthanc.py, `make test-pacs`,
# `make test-faults`) need: Debian's Orthanc and its DICOMweb plugin. The tests start their own
# Orthanc on free ports with a temporary, locked-down configuration (tests/orthanc.py, docs/pacs.md),
# in a private network namespace where the machine allows it. Does nothing when both are present.
# Needs root (or sudo) for apt.
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
    # Where the package started its system service, it listens on 0.0.0.0:8042 and :4242 with
    # Debian's default configuration (C-STORE from any AE title): nothing here uses it.
    if command -v systemctl > /dev/null && systemctl is-active --quiet orthanc 2> /dev/null; then
        $SUDO systemctl disable --now orthanc > /dev/null 2>&1 || true
        echo "stopped and disabled the orthanc system service that the package started"
    fi
fi

orthanc_bin="$(command -v Orthanc || echo /usr/sbin/Orthanc)"
echo "Orthanc: $("$orthanc_bin" --version | head -1)"
have_plugin && echo "Orthanc DICOMweb plugin: ok"
if unshare --net --map-root-user true 2> /dev/null; then
    echo "test Orthancs run in a private network namespace (reachable on 127.0.0.1 only)"
else
    echo "no unprivileged network namespaces: test Orthancs listen on every interface (see docs/pacs.md)"
fi
