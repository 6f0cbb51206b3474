#!/usr/bin/env bash
# Installs everything Voxa's tests and demo need on a fresh Debian machine, idempotently:
# Debian packages (only those missing), the Python venv with the project in editable mode,
# and the npm packages used by the browser and phoenix-client tests.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(redis-server chromium janus coturn)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.voxa-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  log=$(mktemp)
  if ! { .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e '.[dev]'; } >"$log" 2>&1; then
    cat "$log"
    exit 1
  fi
  rm -f "$log"
  touch "$stamp"
fi

# mypy cannot follow setuptools' editable import hook, so it reads the code through a link tree
# that spells the installed package names (voxa.signaling -> signaling/ ...).
mkdir -p build/typecheck/voxa
for pkg in common signaling sfu operator client; do
  ln -sfn "../../../$pkg" "build/typecheck/voxa/$pkg"
done

if [ -f package-lock.json ]; then
  if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --silent --no-audit --no-fund
  fi
fi

# stunnerd (STUNner's TURN dataplane) is built from its Go module once and cached under
# ~/.cache/voxa/; the Kubernetes control plane's binaries are built the same way by the test fixture
# that needs them (e2e/cluster/build.sh), before the first test that uses it.
bash e2e/turn/build.sh >/dev/null
