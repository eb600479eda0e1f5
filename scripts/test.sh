#!/usr/bin/env bash
# Set up (venv, pinned CPU torch, attnlab, browser for the dashboard tests) and run the test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh --runslow`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -f scripts/browser-deps.sh ]; then
  bash scripts/browser-deps.sh || echo "warning: Chromium could not be installed; browser tests will be skipped" >&2
fi
exec .venv/bin/python -m pytest --full "$@"
