#!/usr/bin/env bash
# Refresh requirements.lock: exact versions of every package scripts/setup.sh installs, transitive ones included.
# Made with pip-tools' pip-compile from pyproject's ranges (with the test and fast extras) plus scripts/lock-pins.in.
# Run it after changing a dependency range, then run `bash scripts/test.sh` and commit both files.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=${ATTNLAB_LOCK_VENV:-.venv-lock}
export PIP_DISABLE_PIP_VERSION_CHECK=1
[ -x "$TOOLS/bin/pip-compile" ] || { python3 -m venv "$TOOLS" && "$TOOLS/bin/pip" install -q "pip-tools>=7.4"; }
"$TOOLS/bin/pip-compile" -q --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links \
  --extra test --extra fast --output-file requirements.lock pyproject.toml scripts/lock-pins.in
