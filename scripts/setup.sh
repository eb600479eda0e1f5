#!/usr/bin/env bash
# Create .venv with the exact versions in requirements.lock, then install attnlab itself (editable) on top.
# Idempotent and quiet; offline apart from the package registries. Refresh the lock with scripts/lock.sh.
# The lock pins torch==2.13.0+cpu, the CPU build: where the registry serves only CUDA builds of torch, that pin
# does not resolve; add PyTorch's CPU wheel index as an extra index (pip --extra-index-url) or install your
# own torch first and use `pip install -e .` with pyproject's ranges instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
export PIP_DISABLE_PIP_VERSION_CHECK=1
quiet() { "$@" 2>&1 | { grep -v -e "^WARNING: Location" -e "^$" || true; }; return "${PIPESTATUS[0]}"; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
want=$(sha256sum requirements.lock | cut -d' ' -f1)
if [ "$(cat .venv/.lock-sha256 2>/dev/null)" != "$want" ]; then
  quiet .venv/bin/pip install -q -r requirements.lock
  echo "$want" > .venv/.lock-sha256
fi
# strict editable mode: a tree of links that static tools (mypy, pyright, IDEs) follow; re-run each time so
# that modules added since the last set-up are linked too (about 5 s)
quiet .venv/bin/pip install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=strict
.venv/bin/python -c "import attnlab.core.trace, attnlab.kernels.api, attnlab.hooks"
