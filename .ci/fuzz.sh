#!/usr/bin/env bash
# A bounded fuzz smoke run of the native data plane's parsers (sfu/dataplane/fuzz/, cargo-fuzz):
# builds every target once (nightly, AddressSanitizer), writes the seed corpora, then runs each
# target for FUZZ_SECONDS (default 20; FUZZ_JOBS targets side by side, default one per core) on its
# corpus in sfu/dataplane/fuzz/corpus/<target>, which grows from run to run. A crash fails the run and leaves its input in fuzz/artifacts/<target>/;
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
# FUZZ_JOBS targets at a time (default: one per core); each has its own log.
jobs_max=${FUZZ_JOBS:-$(nproc)}
logs=$(mktemp -d)
trap 'rm -f "$log"; rm -rf "$logs"' EXIT

run_target() {
  local target=$1 out="$logs/$1.log"
  mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
  # -timeout: one input taking over 10 s is a hang; -rss_limit_mb: a leak or a huge allocation.
  if cargo +nightly fuzz run --target-dir "$TARGET_DIR" "$target" "fuzz/corpus/$target" -- \
    -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$out" 2>&1; then
    local runs cov
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out" | tail -n1)
    cov=$(grep -o 'cov: [0-9]*' "$out" | tail -n1 || true)
    echo "fuzz: $target: ${runs:-?} runs in ${SECONDS_PER_TARGET}s, ${cov:-cov: ?}, corpus $(find "fuzz/corpus/$target" -type f | wc -l) inputs"
  else
    {
      echo "fuzz: $target FAILED; the input is in sfu/dataplane/fuzz/artifacts/$target/:"
      grep -v '^ *\(at \|[0-9]*: \)' "$out" | tail -n 60
    } >&2
    return 1
  fi
}

status=0
for target in "${targets[@]}"; do
  while (($(jobs -rp | wc -l) >= jobs_max)); do
    wait -n || status=1
  done
  run_target "$target" &
done
while (($(jobs -rp | wc -l) > 0)); do
  wait -n || status=1
done
echo "fuzz: ${#targets[@]} targets in $((SECONDS - start))s"
exit "$status"
