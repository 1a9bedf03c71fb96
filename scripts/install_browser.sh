#!/usr/bin/env bash
# What scripts/browser_test.py needs, installed only where missing (safe to run again):
#   Debian's chromium and chromium-driver (apt-get; as root, or through sudo), and selenium in the venv.
# Usage: scripts/install_browser.sh [PYTHON]     (PYTHON defaults to .venv/bin/python)
set -euo pipefail
PYTHON="${1:-.venv/bin/python}"

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    echo "chromium and chromedriver: already installed"
else
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { echo "need root (or sudo) to apt-get install chromium chromium-driver" >&2; exit 1; }
        SUDO="sudo"
    fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y chromium chromium-driver \
        || { $SUDO apt-get update && $SUDO apt-get install -y chromium chromium-driver; }
fi

if "$PYTHON" -c "import selenium" 2>/dev/null; then
    echo "selenium: already installed ($("$PYTHON" -c 'import selenium; print(selenium.__version__)'))"
else
    "$PYTHON" -m pip install --quiet "selenium>=4.11"
fi
