#!/usr/bin/env bash
# Install what the dashboard's browser tests need: headless Chromium and its WebDriver (Debian packages),
# and Selenium in the project's venv. Idempotent: does nothing when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi
if [ -x .venv/bin/python ] && ! .venv/bin/python -c "import selenium" 2>/dev/null; then
  PIP_DISABLE_PIP_VERSION_CHECK=1 .venv/bin/pip install -q "selenium>=4.20" 2>&1 | grep -v "^WARNING: Location" || true
fi
chromium --version
chromedriver --version
