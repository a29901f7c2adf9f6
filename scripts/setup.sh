#!/usr/bin/env bash
# setup.sh - create .venv and install the project into it, on a fresh machine or again.
#
# torch is installed first and pinned (torch==2.13.0): that release is the CPU build this
# environment provides offline; letting pip resolve a looser torch would pull several GB of
# CUDA wheels. On a GPU cluster, install the CUDA build of the same version first.
# Re-running is cheap: a stamp records the hash of pyproject.toml and skips pip when unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
STAMP="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ]; then
  echo "[setup] installing torch==2.13.0 and the project (pip)"
  pip_quiet() {  # pip's own exit status counts; only its noise about missing local indexes is hidden
    "$VENV/bin/python" -m pip install --quiet "$@" 2>&1 | grep -v "^WARNING: Location" || true
    return "${PIPESTATUS[0]}"
  }
  pip_quiet --upgrade pip
  pip_quiet "torch==2.13.0"
  pip_quiet -e ".[dev]"
  # Checked from outside the checkout, so the import must come from the installed project.
  venv_python="$(cd "$VENV" && pwd)/bin/python"
  (cd / && "$venv_python" -c "import torch, pipeline, stages, spd, typer, submitit, duckdb, pytest, transformers, openai, anthropic, tenacity, jinja2, matplotlib, selenium")
  rm -f "$VENV"/.installed-*
  touch "$STAMP"
fi
echo "[setup] ready: $VENV ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
