#!/usr/bin/env bash
# install_chromium.sh - headless Chromium and its WebDriver for the report page test (tests/test_report_browser.py).
#
# Installs the Debian packages chromium and chromium-driver when they are missing and either CI=true or the
# script runs as root (apt-get needs root). A no-op when both are already present. Elsewhere (a developer
# without root) it only says what to install; the browser test then skips with that reason (it fails under CI).
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

if have chromium && have chromedriver; then
    echo "chromium and chromedriver present: $(chromium --version 2>/dev/null || echo chromium)"
    exit 0
fi

if [[ "${CI:-}" != "true" && "$(id -u)" != "0" ]]; then
    echo "chromium/chromedriver missing; install them with: sudo apt-get install -y chromium chromium-driver" >&2
    exit 0
fi

SUDO=""
if [[ "$(id -u)" != "0" ]]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver
echo "installed: $(chromium --version 2>/dev/null)"
