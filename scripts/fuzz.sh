#!/usr/bin/env bash
# Fuzz every decoder that reads bytes from a peer, a client or a file (fuzz/fuzz_targets):
# gossip frames, rpc envelopes and call-lane frames, snapshots and page deltas, migration
# messages, the guest ABI, the instrumenter. Each target runs SECONDS (default 60) on its own corpus (fuzz/corpus/TARGET,
# seeded from fuzz/seeds); the executions and any crash are reported. A crash fails the run and leaves its input in fuzz/artifacts/TARGET: add it to
# the target's regression seeds once fixed.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#   FUZZ_RUNS=10000000 scripts/fuzz.sh 3600    (stop each at that many executions)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-60}
shift || true

# cargo-fuzz needs nightly (the sanitizer and coverage flags); both install on first use.
# With FUZZ_OPTIONAL=1 (the test script) a machine that cannot get nightly skips, saying so.
if ! rustup toolchain list | grep -q '^nightly' &&
    ! rustup toolchain install nightly --profile minimal; then
    if [ "${FUZZ_OPTIONAL:-}" = 1 ]; then
        echo "== fuzzing SKIPPED: no nightly toolchain here and none could be installed"
        exit 0
    fi
    echo "cargo-fuzz needs the nightly toolchain (rustup toolchain install nightly)" >&2
    exit 1
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
TARGETS=${*:-$(cd fuzz && cargo +nightly fuzz list)}

cd fuzz
cargo +nightly fuzz build -O
for t in $TARGETS; do
    mkdir -p "corpus/$t"
    [ -d "seeds/$t" ] && cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true
    echo "== $t: ${SECS} s"
    log=$(mktemp)
    if ! cargo +nightly fuzz run -O "$t" "corpus/$t" -- -max_total_time="$SECS" \
        ${FUZZ_RUNS:+-runs=$FUZZ_RUNS} -print_final_stats=1 -rss_limit_mb=4096 >"$log" 2>&1; then
        tail -40 "$log"
        echo "== $t: CRASH (input in fuzz/artifacts/$t)"
        exit 1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    echo "== $t: $runs executions ($speed/s), no crash"
    rm -f "$log"
done
