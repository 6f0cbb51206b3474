#!/usr/bin/env bash
# The SFU's native data plane (sfu/dataplane/, the PyO3 module voxa_dataplane): build its wheel with
# maturin and install it into .venv, only when its sources changed since the last install (a stamp
# in .venv holds a hash of Cargo.toml, Cargo.lock, pyproject.toml, the type stub, src/ and this
# script). Cargo's output lives under ~/.cache/voxa/cargo/dataplane, outside the checkout, so a fresh
# clone on a warm machine rebuilds in seconds. Prints the wheel's path (the image build copies it into build/wheels).
#
#   bash .ci/dataplane.sh            build if needed, install, print the wheel
#   bash .ci/dataplane.sh --env      the environment the other cargo commands share, as shell
#                                    (.ci/rust.sh: eval "$(bash .ci/dataplane.sh --env)")
set -euo pipefail
cd "$(dirname "$0")/.."

CRATE=sfu/dataplane
# The same range as the crate's [build-system] (tests/unit/test_packaging.py checks they agree).
MATURIN_SPEC='maturin>=1.7,<2'
CACHE=${VOXA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/voxa}
export CARGO_TARGET_DIR="$CACHE/cargo/dataplane"
# pyo3's build script picks an interpreter: the venv's base interpreter, always, so its configuration
# (and cargo's fingerprints) are the same for maturin, clippy and the tests, and for every checkout
# (a path inside the checkout would rebuild pyo3 in each clone). The module is abi3: any CPython
# >= 3.11 imports it.
PYO3_PYTHON=$(readlink -f .venv/bin/python)
export PYO3_PYTHON
if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi

if [ "${1:-}" = "--env" ]; then
  printf 'export CARGO_TARGET_DIR=%q PYO3_PYTHON=%q PATH=%q\n' "$CARGO_TARGET_DIR" "$PYO3_PYTHON" "$PATH"
  exit 0
fi

if ! command -v cargo >/dev/null; then
  echo "setup: the native data plane needs a Rust toolchain (cargo): install it with rustup (https://rustup.rs)" >&2
  exit 1
fi

sources_hash() {
  # Paths and contents; new, removed or renamed files count too.
  {
    echo "$MATURIN_SPEC"
    cargo --version
    find .ci/dataplane.sh "$CRATE/Cargo.toml" "$CRATE/Cargo.lock" "$CRATE/pyproject.toml" "$CRATE"/*.pyi "$CRATE/src" \
      -type f 2>/dev/null | LC_ALL=C sort | xargs sha256sum
  } | sha256sum | cut -d' ' -f1
}

out=build/dataplane
stamp=.venv/.voxa-dataplane-installed
hash=$(sources_hash)
wheel=$(compgen -G "$out/voxa_dataplane-*.whl" | head -n1 || true)
if [ -n "$wheel" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ]; then
  echo "$wheel"
  exit 0
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Only checks the installed one when it is in range (no network then).
.venv/bin/pip install -q "$MATURIN_SPEC" >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
echo "setup: building the native data plane ($CRATE, cargo output in $CARGO_TARGET_DIR)" >&2
rm -rf "$out"
start=$SECONDS
# An explicit --target puts the extension's build in its own folder (<triple>/release): `cargo test
# --release` (.ci/rust.sh) builds the same cdylib without the python feature under release/, and
# cdylib file names carry no hash, so sharing that folder would rebuild one after the other.
triple=$(rustc -vV | sed -n 's/^host: //p')
if ! .venv/bin/maturin build --release --locked --manifest-path "$CRATE/Cargo.toml" --target "$triple" \
  --interpreter "$PYO3_PYTHON" --out "$out" >"$log" 2>&1; then
  cat "$log" >&2
  exit 1
fi
wheel=$(compgen -G "$out/voxa_dataplane-*.whl" | head -n1)
if ! .venv/bin/pip install -q --force-reinstall --no-deps "$wheel" >"$log" 2>&1; then
  cat "$log" >&2
  exit 1
fi
echo "$hash" >"$stamp"
echo "setup: built and installed $(basename "$wheel") in $((SECONDS - start))s" >&2
echo "$wheel"
