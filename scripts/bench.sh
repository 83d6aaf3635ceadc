#!/usr/bin/env bash
# Benchmarks behind BENCHMARKS.md: snapshot costs (criterion), request throughput and latency
# over HTTP/1.1 (wrk) and HTTP/3 (our h3load), the tick gap of sensor-filter under that load,
# idle RSS of a node, and the stripped binary size. All on 127.0.0.1, every load bounded in
# time. Prints a summary to paste into BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${BENCH_SECS:-10}

if ! command -v wrk >/dev/null; then
    echo "==> installing wrk (HTTP/1.1 load generator)"
    if [ "$(id -u)" = 0 ]; then apt-get install -y -qq wrk >/dev/null; else sudo apt-get install -y -qq wrk >/dev/null; fi
fi
scripts/build-guests.sh >/dev/null
cargo build --release --quiet -p continuum --bin continuum --example h3load
BIN=$PWD/target/release/continuum
H3LOAD=$PWD/target/release/examples/h3load

WORK=$(mktemp -d "${TMPDIR:-/tmp}/continuum-bench.XXXXXX")
PID=
cleanup() {
    [ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
SUMMARY=$WORK/summary
note() { echo "$*" | tee -a "$SUMMARY"; }

start_node() {
    "$BIN" node --data-dir "$WORK/node" --http 127.0.0.1:0 --no-mdns "$@" >"$WORK/node.log" 2>&1 &
    PID=$!
    for _ in $(seq 300); do [ -f "$WORK/node/node.json" ] && break; sleep 0.1; done
    URL=$(sed -n 's/.*"http": "\(.*\)".*/\1/p' "$WORK/node/node.json")
    export CONTINUUM_NODE=$URL CONTINUUM_DATA_DIR=$WORK/node
}
stop_node() { kill -TERM "$PID"; wait "$PID" || true; PID=; rm -rf "$WORK/node"; }

note "## $(date -u +%Y-%m-%d) on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"

echo "==> idle RSS and binary size"
start_node
sleep 3
note "- idle RSS of a node with no components: $(awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' /proc/$PID/status)"
strip -o "$WORK/continuum.stripped" "$BIN"
note "- stripped binary size: $(du -m "$WORK/continuum.stripped" | cut -f1) MiB ($(stat -c %s "$WORK/continuum.stripped") bytes)"

echo "==> request load (${SECS}s each)"
"$BIN" deploy target/guests/counter.wasm >/dev/null
"$BIN" deploy target/guests/sensor-filter.wasm --name sensor >/dev/null
sleep 0.5
"$BIN" call sensor /reset-gap -X POST --h1 >/dev/null
cat >"$WORK/post.lua" <<'LUA'
wrk.method = "POST"
LUA
wrk -t1 -c32 -d"${SECS}s" --latency -s "$WORK/post.lua" "$URL/c/counter/incr" >"$WORK/wrk.txt"
note "- HTTP/1.1 counter POST /incr (wrk -t1 -c32): $(awk '/Requests\/sec/ {printf "%.0f req/s", $2}' "$WORK/wrk.txt"), p50 $(awk '$1=="50%" {print $2}' "$WORK/wrk.txt"), p99 $(awk '$1=="99%" {print $2}' "$WORK/wrk.txt")"
note "- sensor-filter largest tick gap during the HTTP/1.1 load: $("$BIN" call sensor /stats --h1 | sed 's/.*"max_gap_ms":\([0-9]*\).*/\1/') ms (period 10 ms)"
"$BIN" call sensor /reset-gap -X POST --h1 >/dev/null
note "- HTTP/3 $("$H3LOAD" --data-dir "$WORK/node" --secs "$SECS" --conns 4 --streams 16 /c/counter/incr)"
note "- sensor-filter largest tick gap during the HTTP/3 load: $("$BIN" call sensor /stats --h1 | sed 's/.*"max_gap_ms":\([0-9]*\).*/\1/') ms (period 10 ms)"
wrk -t1 -c1 -d"${SECS}s" --latency -s "$WORK/post.lua" "$URL/c/counter/incr" >"$WORK/wrk1.txt"
note "- HTTP/1.1 unloaded latency (wrk -t1 -c1): p50 $(awk '$1=="50%" {print $2}' "$WORK/wrk1.txt"), p99 $(awk '$1=="99%" {print $2}' "$WORK/wrk1.txt")"
note "- HTTP/3 unloaded $("$H3LOAD" --data-dir "$WORK/node" --secs "$SECS" --conns 1 --streams 1 /c/counter/incr)"
stop_node

echo "==> snapshot costs (criterion)"
cargo bench -p continuum-migrate --bench snapshot 2>/dev/null | tee "$WORK/criterion.txt" | grep -E "^snapshot|time:" || true
note "- snapshot (criterion, median of [low median high]):"
awk '/^snapshot\// { name = $1; if ($2 == "time:") { print "  - " name ": " $5 " " $6; name = "" }; next }
     name != "" && $1 == "time:" { print "  - " name ": " $4 " " $5; name = "" }' "$WORK/criterion.txt" | tee -a "$SUMMARY"

echo
echo "==== summary (for BENCHMARKS.md) ===="
cat "$SUMMARY"
