#!/usr/bin/env bash
# What `make demo` needs on a fresh Debian machine, idempotently and nothing more: the Python venv
# with the project in editable mode (its runtime dependencies only), the SFU's native data plane
# (the voxa_dataplane module, built from sfu/dataplane/ by maturin when its sources changed:
# .ci/dataplane.sh) and the official phoenix JS client that signaling serves to its browser client
# (npm, without the test-only packages). The test suite's own set-up, .ci/setup-test.sh, adds
# everything else.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.voxa-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  log=$(mktemp)
  if ! { .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e .; } >"$log" 2>&1; then
    cat "$log"
    exit 1
  fi
  rm -f "$log"
  touch "$stamp"
fi

bash .ci/dataplane.sh >/dev/null

if [ ! -f node_modules/phoenix/priv/static/phoenix.mjs ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --omit=dev --silent --no-audit --no-fund
fi
