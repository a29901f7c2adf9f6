#!/usr/bin/env bash
# quickstart.sh - set up, then run examples/quickstart.yaml end to end on the local executor.
# Running it again is instant: every stage is CACHED (same config, same key).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python run.py run examples/quickstart.yaml --wait "$@"
.venv/bin/python run.py report runs/quickstart
echo "open the report above in a browser; status: .venv/bin/python run.py status runs/quickstart   (outputs under runs/quickstart/stages/*/out)"
