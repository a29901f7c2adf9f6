#!/usr/bin/env bash
# quickstart.sh - set up, then run examples/quickstart.yaml end to end on the local executor.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python run.py run examples/quickstart.yaml --wait "$@"
.venv/bin/python run.py status runs/quickstart
