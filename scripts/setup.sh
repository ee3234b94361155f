#!/usr/bin/env bash
# One-step set-up on a fresh machine: a virtualenv with torch (CPU, pinned) first, then the
# package with its dev and demo extras. Idempotent: a second run with an unchanged
# pyproject.toml returns at once. VENV overrides the location (default: .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
stamp="$VENV/.gradients-installed"
want="$(sha256sum pyproject.toml | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VENV/bin/python" -c "import gradients, torch" 2>/dev/null; then
  exit 0
fi
echo "setting up $VENV (torch==2.13.0 first, then .[dev,demo]) ..." >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".[dev,demo]"
"$VENV/bin/python" -m pip check
echo "$want" > "$stamp"
