#!/usr/bin/env bash
# A bounded fuzz smoke run of the native data plane's parsers (sfu/dataplane/fuzz/, cargo-fuzz):
# builds every target once (nightly, AddressSanitizer), writes the seed corpora, then runs each
# target for FUZZ_SECONDS (default 20) on its corpus in sfu/dataplane/fuzz/corpus/<target>, which
# grows from run to run. A crash fails the run and leaves its input in fuzz/artifacts/<target>/;
# replay it with `cargo +nightly fuzz run <target> <file>` from sfu/dataplane/.
#
#   bash .ci/fuzz.sh [TARGET...]      (default: every target `cargo fuzz list` names)
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${VOXA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/voxa}
SECONDS_PER_TARGET=${FUZZ_SECONDS:-20}
TARGET_DIR="$CACHE/cargo/dataplane/fuzz"
export PATH="$CACHE/cargo-fuzz/bin:$HOME/.cargo/bin:$PATH"
if ! command -v cargo-fuzz >/dev/null; then
  echo "fuzz: cargo-fuzz is missing: run .ci/setup-test.sh (make setup-test)" >&2
  exit 1
fi
cd sfu/dataplane

log=$(mktemp)
trap 'rm -f "$log"' EXIT
start=$SECONDS
if ! cargo +nightly fuzz build --target-dir "$TARGET_DIR" >"$log" 2>&1; then
  cat "$log" >&2
  exit 1
fi
# The seed generator runs on the stable toolchain, without the fuzzing instrumentation.
if ! CARGO_TARGET_DIR="$CACHE/cargo/dataplane" cargo run --quiet --manifest-path fuzz/Cargo.toml \
  --example seeds -- fuzz/corpus >"$log" 2>&1; then
  cat "$log" >&2
  exit 1
fi
echo "fuzz: built the targets and their seeds in $((SECONDS - start))s"

if (($#)); then targets=("$@"); else mapfile -t targets < <(cargo fuzz list); fi
status=0
for target in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
  # -timeout: one input taking over 10 s is a hang; -rss_limit_mb: a leak or a huge allocation.
  if cargo +nightly fuzz run --target-dir "$TARGET_DIR" "$target" "fuzz/corpus/$target" -- \
    -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n1 || true)
    echo "fuzz: $target: ${runs:-?} runs in ${SECONDS_PER_TARGET}s, ${cov:-cov: ?}, corpus $(find "fuzz/corpus/$target" -type f | wc -l) inputs"
  else
    status=1
    echo "fuzz: $target FAILED; the input is in sfu/dataplane/fuzz/artifacts/$target/:" >&2
    tail -n 60 "$log" >&2
  fi
done
echo "fuzz: done in $((SECONDS - start))s"
exit "$status"
