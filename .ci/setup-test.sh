#!/usr/bin/env bash
# Everything Voxa's tests need on a fresh Debian machine, idempotently: what `make demo` needs
# (.ci/setup.sh), then the Debian packages (only those missing), the development tools in the venv,
# the npm packages the browser and phoenix-client tests drive, the nightly Rust toolchain and
# cargo-fuzz (the native data plane's fuzz smoke run), stunnerd, helm and livekit-server (with the
# benchmark's LiveKit load client) from their Go modules. The Kubernetes binaries, the kind tools and the images are built by the test fixtures that
# need them (e2e/cluster, e2e/kind), before the first test that uses them; all of it is cached under
# ~/.cache/voxa/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup.sh

# docker.io (the engine the kind suite starts when none runs), iptables (its fence), debootstrap and
# python3-venv (the images' Debian bases and the wheels resolved by their interpreter), iproute2
# (`ip netns` and `tc`: the shaped links of the simulcast and RTX browser tests; iptables drops there),
# haproxy (the load balancer in front of the chaos soak's two signaling replicas).
APT_PACKAGES=(redis-server chromium janus coturn docker.io iptables iproute2 debootstrap python3-venv haproxy)
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

stamp=.venv/.voxa-dev-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  log=$(mktemp)
  if ! .venv/bin/pip install -q -e '.[dev]' >"$log" 2>&1; then
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

# The test-only npm packages (playwright-core, ws, web-push-testing) too; .ci/setup.sh may have
# installed only phoenix.
if [ ! -d node_modules/playwright-core ] || [ ! -d node_modules/ws ] || [ ! -d node_modules/web-push-testing ] \
  || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --silent --no-audit --no-fund
fi

# The fuzz smoke run of the native data plane (.ci/fuzz.sh) needs a nightly toolchain and cargo-fuzz,
# installed once into the cache (crates.io only; the fuzz targets build offline from then on).
CARGO_FUZZ_VERSION=0.13.2
CACHE=${VOXA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/voxa}
[ -x "$HOME/.cargo/bin/rustup" ] && export PATH="$HOME/.cargo/bin:$PATH"
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "setup: installing the nightly Rust toolchain (for cargo-fuzz)"
  rustup toolchain install nightly --profile minimal >/dev/null
fi
if [ "$("$CACHE/cargo-fuzz/bin/cargo-fuzz" --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
  echo "setup: installing cargo-fuzz $CARGO_FUZZ_VERSION into $CACHE/cargo-fuzz"
  log=$(mktemp)
  if ! cargo install --quiet --locked --root "$CACHE/cargo-fuzz" --version "$CARGO_FUZZ_VERSION" cargo-fuzz >"$log" 2>&1; then
    cat "$log"
    exit 1
  fi
  rm -f "$log"
fi

# stunnerd (STUNner's TURN dataplane), helm, and livekit-server with the benchmark's Go load client
# (bench/sfu.py's LiveKit target) are built from their Go modules once and cached.
bash e2e/turn/build.sh >/dev/null
bash bench/livekit/build.sh >/dev/null
bash e2e/kind/tools.sh helm >/dev/null
