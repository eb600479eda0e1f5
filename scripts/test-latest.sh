#!/usr/bin/env bash
# The latest-versions check: build .venv-latest with the newest release of every dependency that pyproject's
# ranges allow (not the lock), print how it differs from requirements.lock, and run the default test suite in it.
# Run it each session; fix what it finds, or narrow a range in pyproject with a comment naming the incompatibility.
# torch stays at the CPU build 2.13.0: newer torch releases on the registry are multi-GB CUDA builds, and a torch
# upgrade is a deliberate lock change. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
V=.venv-latest
export PIP_DISABLE_PIP_VERSION_CHECK=1
quiet() { "$@" 2>&1 | { grep -v -e "^WARNING: Location" -e "^$" || true; }; return "${PIPESTATUS[0]}"; }
rm -rf "$V"
"$PY" -m venv "$V"
quiet "$V/bin/pip" install -q "torch==2.13.0" "numpy"
quiet "$V/bin/pip" install -q -e ".[test,fast]" --config-settings editable_mode=strict
"$V/bin/pip" freeze --exclude-editable | sed 's/ @ .*//' | sort > "$V/freeze.txt"
grep -v -e '^#' -e '^ ' -e '^$' requirements.lock | sed 's/ ;.*//' | sort > "$V/lock.txt"
echo "newer than the lock (or not in it):"
comm -13 "$V/lock.txt" "$V/freeze.txt" | sed 's/^/  /' || true
if [ -f scripts/browser-deps.sh ]; then
  bash scripts/browser-deps.sh >/dev/null || echo "warning: Chromium could not be installed; browser tests will be skipped" >&2
fi
exec "$V/bin/python" -m pytest "$@"
