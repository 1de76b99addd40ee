#!/bin/sh
# Install what the browser tests (tests/detector/test_review_browser.py) drive: Debian's chromium
# and its matching chromedriver, from the distribution's packages (root, or sudo, needed). Nothing
# is downloaded by the tests themselves. Does nothing when both are already installed.
set -eu
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null \
    || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y --no-install-recommends chromium chromium-driver >/dev/null; }
command -v chromium >/dev/null && command -v chromedriver >/dev/null
