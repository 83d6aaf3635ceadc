#!/usr/bin/env bash
# The main demo, on one machine: a mesh of three equal nodes on 127.0.0.1, closed by a swarm
# key. A stateful component deployed on one node answers through the others (HTTP/3 and
# HTTP/1.1), a second is placed on a remote node, a federation forms from the nodes' labels,
# and a checkpoint of the component restores elsewhere. Everything it starts, it stops.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/build-guests.sh >/dev/null
echo "==> building continuum (release)"
cargo build --release --quiet -p continuum
BIN=$PWD/target/release/continuum
export CONTINUUM_BIN=$BIN

WORK=$(mktemp -d "${TMPDIR:-/tmp}/continuum-demo.XXXXXX")
cleanup() {
    scripts/swarm.sh stop --dir "$WORK/swarm" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

step() { printf '\n==> %s\n' "$*"; }
# on I ARGS...: run a client command against node I.
on() {
    local i=$1; shift
    printf '$ continuum %s    # on node %s\n' "$*" "$i"
    "$BIN" "$@" --node "http://127.0.0.1:$((BASE + i))" --data-dir "$WORK/swarm/node$i"
}
BASE=${CONTINUUM_BASE_PORT:-7070}

step "make a swarm key and start three nodes (node 1 is the others' bootstrap peer)"
"$BIN" keygen -o "$WORK/swarm.key"
export CONTINUUM_NODE_ARGS_1="--label zone=a" CONTINUUM_NODE_ARGS_2="--label zone=a" CONTINUUM_NODE_ARGS_3="--label zone=b"
scripts/swarm.sh start 3 --dir "$WORK/swarm" -- --swarm-key "$WORK/swarm.key"
on 1 status

step "deploy the counter component on node 1"
on 1 deploy target/guests/counter.wasm --name counter
sleep 0.3

step "call it through node 2 over HTTP/3, and through node 3 over HTTP/1.1: one state, wherever you enter"
on 2 call counter /incr -X POST --json
on 3 call counter /incr -X POST --h1 --json
on 2 call counter /incr -X POST
on 1 call counter /count

step "place a key-value store on node 3 from node 1, and use it from node 2"
on 1 deploy target/guests/kv.wasm --name kv --on "$(sed -n 's/.*"peer_id": "\([^"]*\)".*/\1/p' "$WORK/swarm/node3/node.json")"
sleep 0.3
on 2 call kv /k/greeting -X PUT -d "hello from node 2"
on 1 call kv /k/greeting
on 2 ls

step "a temporary federation of the zone=a nodes (lease 30 s, renewed while its owner keeps it)"
on 1 federate create --name zone-a --lease 30s --require zone=a --objective "demo"
sleep 0.5
on 3 federate ls

step "checkpoint the counter on node 1 and restore it on node 3 under another name"
on 1 checkpoint counter -o "$WORK/counter.ckpt"
on 3 restore "$WORK/counter.ckpt" --name counter-copy
on 2 call counter-copy /count
on 2 status

step "done: stopping the three nodes"
