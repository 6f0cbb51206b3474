#!/usr/bin/env bash
# A bounded coverage-guided fuzz run (atheris) of the Python parsers that read network input:
# SDP (voxa.sfu.sdp.parse, the Negotiator's on_offer/on_answer), the Phoenix v2 frame codec, RTP
# and RTCP (tests/fuzz/targets.py). Each target runs for PYFUZZ_SECONDS (default 15; PYFUZZ_JOBS
# targets side by side, default one per core) on its corpus in build/pyfuzz/corpus/<target>, which
# grows from run to run. Any exception other than the parser's documented error is a crash: the run
# fails and leaves the input in build/pyfuzz/artifacts/<target>/; replay it with
# `.venv/bin/python -m tests.fuzz.pyfuzz <target> build/pyfuzz/corpus/<target> /tmp <file>`, and
# add it to tests/unit/test_fuzz_regressions.py.
#
# The long run: PYFUZZ_RUNS=10000000 bash .ci/pyfuzz.sh (a count of executions per target instead
# of a time; nice -n 19 it on a shared machine).
#
#   bash .ci/pyfuzz.sh [TARGET...]      (default: every target)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
SECONDS_PER_TARGET=${PYFUZZ_SECONDS:-15}
RUNS=${PYFUZZ_RUNS:-}
jobs_max=${PYFUZZ_JOBS:-$(nproc)}
if ! "$PY" -c 'import atheris' 2>/dev/null; then
  echo "pyfuzz: atheris is missing: run .ci/setup-test.sh (make setup-test)" >&2
  exit 1
fi
if (($#)); then targets=("$@"); else mapfile -t targets < <("$PY" -m tests.fuzz.pyfuzz --list 2>/dev/null); fi
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
start=$SECONDS

run_target() {
  local target=$1 out="$logs/$1.log" corpus="build/pyfuzz/corpus/$1" artifacts="build/pyfuzz/artifacts/$1"
  local budget=(-max_total_time="$SECONDS_PER_TARGET") t0=$SECONDS
  [ -n "$RUNS" ] && budget=(-runs="$RUNS")
  # -timeout: one input taking over 10 s is a hang; -rss_limit_mb: a leak or a huge allocation;
  # -max_len: SDP is bounded at 64 KiB by the parser, frames at 64 KiB by signaling.
  if "$PY" -m tests.fuzz.pyfuzz "$target" "$corpus" "$artifacts" "${budget[@]}" -timeout=10 \
    -rss_limit_mb=2048 -max_len=8192 -print_final_stats=1 >"$out" 2>&1; then
    local runs cov
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out" | tail -n1)
    cov=$(grep -o 'cov: [0-9]*' "$out" | tail -n1 || true)
    echo "pyfuzz: $target: ${runs:-?} runs in $((SECONDS - t0))s, ${cov:-cov: ?}, corpus $(find "$corpus" -type f | wc -l) inputs, 0 crashes"
  else
    {
      echo "pyfuzz: $target FAILED; the input is in $artifacts/:"
      tail -n 60 "$out"
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
echo "pyfuzz: ${#targets[@]} targets in $((SECONDS - start))s"
exit "$status"
