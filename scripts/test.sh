#!/usr/bin/env bash
# test.sh - set up, start the local SLURM cluster when possible, lint, and run the whole test suite.
#
# Under CI=true the single-node SLURM cluster (scripts/local_slurm.sh) must start and the tests
# marked `slurm` must run: they fail instead of skipping when no cluster is reachable.
# Elsewhere the cluster is started when we are root with apt-get; otherwise slurm tests skip
# with a reason. Extra arguments go to pytest (e.g. `bash scripts/test.sh -m "not slurm"`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

if [ "${CI:-}" = "true" ]; then
  bash scripts/local_slurm.sh start
elif [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1 && [ "${SKIP_SLURM:-}" != "1" ]; then
  bash scripts/local_slurm.sh start || echo "[test] local SLURM did not start; slurm tests will skip"
fi

bash scripts/install_chromium.sh  # the report's browser test (headless Chromium); a no-op when present

.venv/bin/ruff check pipeline stages spd testkit tests benchmarks run.py
.venv/bin/ruff format --check pipeline stages spd testkit tests benchmarks run.py
.venv/bin/python -m pytest --durations=15 "$@"
