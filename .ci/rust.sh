#!/usr/bin/env bash
# The native data plane's own checks (sfu/dataplane/): rustfmt, clippy with every target and the
# Python bindings (warnings are errors), and the crate's tests in release mode, sharing the cargo
# output directory of .ci/dataplane.sh (~/.cache/voxa/cargo/dataplane) so a warm run takes seconds.
#
#   bash .ci/rust.sh            everything (make rust, part of make test)
#   bash .ci/rust.sh --quick    without clippy (make test-quick)
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash .ci/dataplane.sh --env)"
manifest=sfu/dataplane/Cargo.toml

cargo fmt --manifest-path "$manifest" --check
cargo fmt --manifest-path sfu/dataplane/fuzz/Cargo.toml --check
if [ "${1:-}" != "--quick" ]; then
  cargo clippy --quiet --locked --manifest-path "$manifest" --all-targets --features python -- -D warnings
fi
cargo test --quiet --locked --release --manifest-path "$manifest"
