#!/usr/bin/env bash
# The main demo, on one machine: a node hosts the stateful `counter` component; we call it over
# HTTP/3 and HTTP/1.1, checkpoint it, stop and restart the node (the count survives), and
# restore the checkpoint on a second, empty node. Everything it starts, it stops.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/build-guests.sh >/dev/null
echo "==> building continuum (release)"
cargo build --release --quiet -p continuum
BIN=$PWD/target/release/continuum

WORK=$(mktemp -d "${TMPDIR:-/tmp}/continuum-demo.XXXXXX")
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# start_node DIR: run a node on a free loopback port, wait until it is ready.
start_node() {
    local dir=$1
    rm -f "$dir/node.json"
    "$BIN" node --data-dir "$dir" --http 127.0.0.1:0 --no-mdns >>"$dir.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 300); do
        [ -f "$dir/node.json" ] && break
        sleep 0.1
    done
    [ -f "$dir/node.json" ] || { echo "node did not start; log:"; cat "$dir.log"; exit 1; }
    export CONTINUUM_DATA_DIR=$dir
    CONTINUUM_NODE=$(sed -n 's/.*"http": "\(.*\)".*/\1/p' "$dir/node.json")
    export CONTINUUM_NODE
}

step() { printf '\n==> %s\n' "$*"; }
run() { printf '$ continuum %s\n' "$*"; "$BIN" "$@"; }

step "start a node (data in $WORK/a)"
start_node "$WORK/a"
run status

step "deploy the counter component (target/guests/counter.wasm, built from guest/examples/counter)"
run deploy target/guests/counter.wasm --name counter

step "call it over HTTP/3 (the default) ..."
for _ in 1 2 3; do run call counter /incr -X POST; done
step "... and over HTTP/1.1: one state, whichever way in"
for _ in 1 2; do run call counter /incr -X POST --h1; done
run call counter /count --h1
run ls

step "checkpoint it to a file (state and module together)"
run checkpoint counter -o "$WORK/counter.ckpt"

step "stop the node (SIGTERM checkpoints every component) and start it again on the same data"
kill -TERM "${PIDS[0]}"
wait "${PIDS[0]}" || true
start_node "$WORK/a"
run call counter /count
run call counter /incr -X POST

step "restore the checkpoint file on a second, empty node"
start_node "$WORK/b"
run restore "$WORK/counter.ckpt" --name counter
run call counter /count
run ls

step "done: stopping both nodes"
