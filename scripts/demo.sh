#!/usr/bin/env bash
# The main demo, on one machine: a mesh of three equal nodes on 127.0.0.1, closed by a swarm
# key. A stateful component deployed on one node answers through the others (HTTP/3 and
# HTTP/1.1), a second is placed on a remote node, the first moves live from node to node while
# a client keeps calling it (no request lost), it is updated live to a version with another
# state layout (and a broken version rolls back), a federation forms from the nodes' labels, and
# a checkpoint restores elsewhere, and the counter moves to a node of another architecture
# (aarch64, under qemu-user) and back. Then an application of three components that call each
# other by name (a sensor, a filter, a controller) runs on the three nodes, its middle stage
# moves live while the others keep calling it, and a component that reads the sensor moves next
# to it on its own. Everything it starts, it stops.
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
peer() { sed -n 's/.*"peer_id": "\([^"]*\)".*/\1/p' "$WORK/swarm/node$1/node.json"; }

# Node 4 runs this host's pair architecture's build (aarch64 on x86_64) under qemu-user; the
# first run builds it (a few minutes).
FOREIGN=aarch64
[ "$(uname -m)" != aarch64 ] || FOREIGN=x86_64
step "make a swarm key and start four nodes (node 1 is the others' bootstrap peer; node 4 is an $FOREIGN build under qemu-user)"
"$BIN" keygen -o "$WORK/swarm.key"
export CONTINUUM_NODE_ARGS_1="--label zone=a --label sensor=temp" CONTINUUM_NODE_ARGS_2="--label zone=a" CONTINUUM_NODE_ARGS_3="--label zone=b"
scripts/swarm.sh start 4 --arch "$(uname -m),$(uname -m),$(uname -m),$FOREIGN" --dir "$WORK/swarm" -- --swarm-key "$WORK/swarm.key"
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
on 1 deploy target/guests/kv.wasm --name kv --on "$(peer 3)"
sleep 0.3
on 2 call kv /k/greeting -X PUT -d "hello from node 2"
on 1 call kv /k/greeting
on 2 ls

step "move the counter live, node 1 -> node 3 -> node 2, while a client sends 500 increments through node 2"
for _ in $(seq 500); do
    curl -s -o /dev/null -w '%{http_code}\n' -X POST "http://127.0.0.1:$((BASE + 2))/c/counter/incr"
done >"$WORK/codes" &
LOAD=$!
sleep 0.2
on 1 migrate counter --to "$(peer 3)"
on 3 migrate counter --to "$(peer 2)"
wait $LOAD
echo "client: $(grep -c '^200$' "$WORK/codes") of 500 increments answered 200, $(grep -vc '^200$' "$WORK/codes" || true) failed"
echo "the count should be 3 + 500:"
on 1 call counter /count
on 1 ls

step "update the counter live to v2 (another state layout), then try a broken v3: it rolls back"
on 2 update counter target/guests/counter-v2.wasm
on 1 call counter /version
on 2 update counter target/guests/counter-v2-broken.wasm || echo "(refused, as it should be)"
echo "still 503, at version 2:"
on 1 call counter /count

step "a temporary federation of the zone=a nodes (lease 30 s, renewed while its owner keeps it)"
on 1 federate create --name zone-a --lease 30s --require zone=a --objective "demo"
sleep 0.5
on 3 federate ls

step "checkpoint the counter on node 2 (its host now) and restore it on node 3 under another name"
on 2 checkpoint counter -o "$WORK/counter.ckpt"
on 3 restore "$WORK/counter.ckpt" --name counter-copy
on 2 call counter-copy /count
on 2 status

step "move the counter live to node 4 ($FOREIGN, under qemu-user) and back, while a client sends 300 increments through node 1"
on 4 status | head -3
before=$(on 1 call counter /count | tail -1)
for _ in $(seq 300); do
    curl -s -o /dev/null -w '%{http_code}\n' -X POST "http://127.0.0.1:$((BASE + 1))/c/counter/incr"
done >"$WORK/codes" &
LOAD=$!
sleep 0.2
on 2 migrate counter --to "$(peer 4)"
on 1 call counter /count
on 4 migrate counter --to "$(peer 2)"
wait $LOAD
echo "client: $(grep -c '^200$' "$WORK/codes") of 300 increments answered 200, $(grep -vc '^200$' "$WORK/codes" || true) failed"
echo "the count should be $before + 300:"
on 1 call counter /count

step "an application of three components that call each other by name: sensor (every 10 ms) on node 1, which has the sensor; filter (reads it every 10 ms) on node 2; controller (reads the filter every 20 ms, PI control to a setpoint) on node 3"
on 1 deploy target/guests/sensor.wasm --name sensor --require sensor=temp
on 2 deploy target/guests/filter.wasm --name filter
on 3 deploy target/guests/controller.wasm --name controller
sleep 1
on 3 call controller /setpoint -X PUT -d 22.5
sleep 1
on 3 call controller /state

step "move the filter live, node 2 -> node 3 -> node 2, while the controller reads it and it reads the sensor (calls in flight move with it)"
on 2 call filter /reset-gap -X POST >/dev/null
on 3 call controller /reset-gap -X POST >/dev/null
on 2 migrate filter --to "$(peer 3)"
on 3 migrate filter --to "$(peer 2)"
sleep 0.5
echo "errors stay 0; max_gap_ms is the longest pause between two readings (period 10 ms / 20 ms):"
on 1 call filter /stats
on 1 call controller /state
on 1 ls

step "data locality: a second filter, deployed on node 3 with --policy follow-traffic, moves next to the sensor it reads on its own"
on 3 deploy target/guests/filter.wasm --name nearby --policy follow-traffic
for _ in $(seq 100); do
    host=$(curl -s -D - -o /dev/null "http://127.0.0.1:$((BASE + 3))/c/nearby/stats" | tr -d '\r' | sed -n 's/^x-continuum-host: //p')
    [ "$host" = "$(peer 1)" ] && break
    sleep 0.1
done
echo "nearby now runs on $host (node 1: $(peer 1))"
on 3 status | sed -n '/placement decisions/,$p' | head -3

step "done: stopping the four nodes"
