#!/usr/bin/env bash
# Fetch the OHIF viewer that `ptxseg view` and `make test-viewer` serve: npm's @ohif/app at the
# version and sha512 that viewer/package-lock.json pins (npm ci refuses any other tarball), into
# viewer/node_modules/@ohif/app/dist. Installs Debian's nodejs and npm when npm is absent (needs
# root or sudo for apt). Does nothing when the pinned version is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if ! command -v npm > /dev/null; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        nodejs npm > /dev/null
fi

pinned="$(node -p "require('./viewer/package-lock.json').packages['node_modules/@ohif/app'].version")"
installed="$(node -p "try { require('./viewer/node_modules/@ohif/app/package.json').version } catch (e) { '' }")"
if [ "$installed" != "$pinned" ] || [ ! -f viewer/node_modules/@ohif/app/dist/index.html ]; then
    npm ci --prefix viewer --ignore-scripts --no-audit --no-fund --loglevel=error
fi
echo "OHIF viewer: @ohif/app $pinned in viewer/node_modules/@ohif/app/dist"
