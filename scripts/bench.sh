#!/usr/bin/env bash
# Benchmarks behind BENCHMARKS.md. All on 127.0.0.1, every load bounded in time; prints a
# summary to paste into BENCHMARKS.md.
#
#   scripts/bench.sh [node] [snapshot] [mesh] [migrate] [calls] [arch]     (default: all six)
#
# node:     idle RSS, stripped binary size, requests/s and latency over HTTP/1.1 (wrk) and
#           HTTP/3 (our h3load), the tick gap of sensor-filter under that load
# snapshot: checkpoint, restore, decode and delta costs (criterion)
# mesh:     time to full view, idle traffic per node, routing across a move from the last node
#           started, and the time until a killed node is out of
#           every view, for 5, 20, 50 and 100 nodes (MESH_SIZES), extra latency of a request
#           routed through another node
# migrate:  downtime, total time and request latency of live migrations between two nodes,
#           for 1, 16, 64 MiB of state rewritten at 0, 1, 10 % per 100 ms, pre-copy and
#           stop-and-copy (our migbench)
# calls:    a call between components on one node and across two (round trips timed inside the
#           caller, relay's /time), throughput of one relay with 64 requests waiting on slow
# arch:     release binary sizes (scripts/release.sh; only RELEASE_TARGETS="T ..." if set),
#           counter's request latency on each engine, and a 16 MiB pre-copy migration in one run between two x86_64 Cranelift nodes, to a
#           Pulley node, and to an aarch64 node under qemu-user
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${BENCH_SECS:-10}
SECTIONS=${*:-node snapshot mesh migrate calls arch}
want() { [[ " $SECTIONS " == *" $1 "* ]]; }

for tool in wrk curl; do
    if ! command -v $tool >/dev/null; then
        echo "==> installing $tool"
        if [ "$(id -u)" = 0 ]; then apt-get install -y -qq $tool >/dev/null; else sudo apt-get install -y -qq $tool >/dev/null; fi
    fi
done
scripts/build-guests.sh >/dev/null
cargo build --release --quiet -p continuum --bin continuum --example h3load --example migbench
# CONTINUUM_BIN: another build of the node to measure (such as a scripts/release.sh binary).
BIN=${CONTINUUM_BIN:-$PWD/target/release/continuum}
H3LOAD=$PWD/target/release/examples/h3load

WORK=$(mktemp -d "${TMPDIR:-/tmp}/continuum-bench.XXXXXX")
PID=
cleanup() {
    [ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    # A section that failed leaves no swarm running.
    [ -d "${SW:-}" ] && scripts/swarm.sh stop --dir "$SW" >/dev/null 2>&1
    rm -rf "$WORK"
}
trap cleanup EXIT
SUMMARY=$WORK/summary
printf 'wrk.method = "POST"\n' >"$WORK/post.lua"
note() { echo "$*" | tee -a "$SUMMARY"; }

start_node() {
    "$BIN" node --data-dir "$WORK/node" --http 127.0.0.1:0 --no-mdns "$@" >"$WORK/node.log" 2>&1 &
    PID=$!
    for _ in $(seq 300); do [ -f "$WORK/node/node.json" ] && break; sleep 0.1; done
    URL=$(sed -n 's/.*"http": "\(.*\)".*/\1/p' "$WORK/node/node.json")
    export CONTINUUM_NODE=$URL CONTINUUM_DATA_DIR=$WORK/node
}
stop_node() { kill -TERM "$PID"; wait "$PID" || true; PID=; rm -rf "$WORK/node"; }
# Each swarm starts from empty data directories: a component one section deployed must not be
# restored into the next (a second `counter` on node 1 once made the cross-node call local).
stop_swarm() { scripts/swarm.sh stop --dir "$SW" >/dev/null; rm -rf "$SW"; }

note "## $(date -u +%Y-%m-%d) on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"

if want node; then
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
fi

if want snapshot; then
echo "==> snapshot costs (criterion)"
cargo bench -p continuum-migrate --bench snapshot 2>/dev/null | tee "$WORK/criterion.txt" | grep -E "^snapshot|time:" || true
note "- snapshot (criterion, median of [low median high]):"
awk '/^snapshot\// { name = $1; if ($2 == "time:") { print "  - " name ": " $5 " " $6; name = "" }; next }
     name != "" && $1 == "time:" { print "  - " name ": " $4 " " $5; name = "" }' "$WORK/criterion.txt" | tee -a "$SUMMARY"
fi

if want mesh; then
export CONTINUUM_BIN=$BIN
SW=$WORK/swarm
echo "==> time to full view, idle traffic, a killed node's detection"
# MESH_SIZES: the swarm sizes (default 5 20 50 100). Membership is scoped to neighbours (the
# swarm-wide heartbeats measured before are gone since the commit after d0f41b8).
for n in ${MESH_SIZES:-5 20 50 100}; do
    note "- $n nodes, one bootstrap: $(CONTINUUM_WAIT_PEERS=1 scripts/swarm.sh start "$n" --dir "$SW" | tail -n 1 | sed 's/^[0-9]* nodes in [^:]*: //')"
    # Idle traffic: every node's libp2p transport bytes (in + out) over 30 s, after 75 s of
    # settling, so that the connections the start's lookups opened to peers that are no
    # neighbours have idled out (60 s); and the gossip payload within it.
    sleep 75
    metric() { curl -s --max-time 5 "http://127.0.0.1:$((7070 + $1))/metrics" | awk -v m="$2" '$1 ~ "^"m {s += $2} END {printf "%.0f\n", s}'; }
    total() { for i in $(seq "$n"); do metric "$i" "$1"; done | awk '{s += $1} END {printf "%.0f\n", s}'; }
    t0=$(total libp2p_bandwidth_bytes_total); g0=$(total continuum_gossip_bytes_total)
    sleep 30
    t1=$(total libp2p_bandwidth_bytes_total); g1=$(total continuum_gossip_bytes_total)
    note "- idle traffic per node, $n nodes (advert expiry 15 s, heartbeat 7.5 s): $(( (t1 - t0) / 30 / n )) B/s on the wire (in + out), of which gossip payload $(( (g1 - g0) / 30 / n )) B/s; node RSS $(awk '/VmRSS/ {s += $2; c++} END {printf "%.0f", s / c / 1024}' $(sed 's|^|/proc/|; s|$|/status|' "$SW/pids")) MiB on average"
    # Routing across a move: counter deployed on node 1 and read through the last node started
    # (scoped to neighbours, most likely none of node 1's) until it answers; then moved to node
    # 2 while a client increments it through the last node: the time from the move's end until
    # the last node routes to node 2, and the client's failed requests (bounded: 60 s, 20,000).
    n1=(--node http://127.0.0.1:7071 --data-dir "$SW/node1")
    "$BIN" deploy target/guests/counter.wasm "${n1[@]}" >/dev/null
    far=http://127.0.0.1:$((7070 + n))/c/counter
    host_at() { curl -s --max-time 5 -o /dev/null -D - "$far/count" | tr -d '\r' | awk 'tolower($1) == "x-continuum-host:" {print $2}'; }
    peer_of() { sed -n 's/.*"peer_id": "\([^"]*\)".*/\1/p' "$SW/node$1/node.json" | head -n 1; }
    found=$(date +%s.%N)
    for _ in $(seq 500); do [ "$(host_at)" = "$(peer_of 1)" ] && break; sleep 0.02; done
    found=$(awk -v s="$found" -v d="$(date +%s.%N)" 'BEGIN {printf "%.2f", d - s}')
    (
        ok=0 failed=0
        for _ in $(seq 20000); do
            [ -f "$WORK/client.stop" ] && break
            code=$(curl -s --max-time 5 -o "$WORK/client.body" -w '%{http_code}' -X POST "$far/incr")
            if [ "$code" = 200 ]; then ok=$((ok + 1)); else
                failed=$((failed + 1))
                echo "$code $(head -c 300 "$WORK/client.body")" >>"$WORK/client.failures"
            fi
        done
        echo "$ok $failed" >"$WORK/client.out"
    ) &
    client=$!
    sleep 1
    "$BIN" migrate counter --to "$(peer_of 2)" "${n1[@]}" >/dev/null
    moved=$(date +%s.%N)
    for _ in $(seq 3000); do [ "$(host_at)" = "$(peer_of 2)" ] && break; sleep 0.02; done
    routed=$(awk -v s="$moved" -v d="$(date +%s.%N)" 'BEGIN {printf "%.2f", d - s}')
    sleep 1
    touch "$WORK/client.stop"
    wait "$client"
    rm -f "$WORK/client.stop"
    read -r ok failed <"$WORK/client.out"
    count=$(curl -s --max-time 5 "$far/count")
    note "- routing, $n nodes: node $n reaches counter on node 1 ${found} s after the deploy; after its move to node 2, node $n routes there ${routed} s after the move ended; its client: $ok increments, $failed failed$([ -s "$WORK/client.failures" ] && echo " (first: $(head -n 1 "$WORK/client.failures"))"), the count $count"
    rm -f "$WORK/client.failures"
    # A killed node (kill -9, the last one started): the time until no other node's view holds
    # it (each node's /v1/status; one round of them takes a while at 100 nodes), for 60 s at most.
    victim_id=$(sed -n 's/.*"peer_id": "\([^"]*\)".*/\1/p' "$SW/node$n/node.json" | head -n 1)
    holding() {
        for i in $(seq $((n - 1))); do
            curl -s --max-time 5 -H "Authorization: Bearer $(cat "$SW/node$i/admin.token")" \
                "http://127.0.0.1:$((7070 + i))/v1/status" | grep -c "$victim_id" || true
        done | awk '$1 > 0 {c++} END {print c + 0}'
    }
    before=$(holding)
    kill -KILL "$(tail -n 1 "$SW/pids")"
    killed=$(date +%s.%N)
    left=$before
    while [ "$(awk -v k="$killed" -v d="$(date +%s.%N)" 'BEGIN {print (d - k < 60)}')" = 1 ]; do
        left=$(holding)
        [ "$left" = 0 ] && break
        sleep 0.2
    done
    note "- a node killed among $n (in $before of the $((n - 1)) other views): $( [ "$left" = 0 ] && awk -v k="$killed" -v d="$(date +%s.%N)" 'BEGIN {printf "out of every view in %.1f s", d - k}' || echo "still in $left views after 60 s")"
    stop_swarm
done

echo "==> routed vs direct requests"
scripts/swarm.sh start 2 --dir "$SW" >/dev/null
"$BIN" deploy target/guests/counter.wasm --node http://127.0.0.1:7071 --data-dir "$SW/node1" >/dev/null
sleep 0.5
for via in 1 2; do
    wrk -t1 -c1 -d"${SECS}s" --latency -s "$WORK/post.lua" "http://127.0.0.1:$((7070 + via))/c/counter/incr" >"$WORK/route$via.txt"
done
p() { awk -v q="$2" '$1==q {print $2}' "$WORK/route$1.txt"; }
note "- HTTP/1.1, 1 connection: direct to the host p50 $(p 1 50%) p99 $(p 1 99%); through another node p50 $(p 2 50%) p99 $(p 2 99%)"
note "- HTTP/3, 1 request at a time, direct: $("$H3LOAD" --data-dir "$SW/node1" --secs "$SECS" --conns 1 --streams 1 /c/counter/incr | sed 's/^h3: //')"
note "- HTTP/3, 1 request at a time, routed: $("$H3LOAD" --data-dir "$SW/node2" --secs "$SECS" --conns 1 --streams 1 /c/counter/incr | sed 's/^h3: //')"
wrk -t1 -c32 -d"${SECS}s" --latency -s "$WORK/post.lua" "http://127.0.0.1:7072/c/counter/incr" >"$WORK/route-load.txt"
note "- HTTP/1.1 through another node, 32 connections: $(awk '/Requests\/sec/ {printf "%.0f req/s", $2}' "$WORK/route-load.txt"), p50 $(awk '$1=="50%" {print $2}' "$WORK/route-load.txt"), p99 $(awk '$1=="99%" {print $2}' "$WORK/route-load.txt")"
stop_swarm
fi

if want migrate; then
export CONTINUUM_BIN=$BIN
SW=$WORK/swarm
echo "==> live migration (migbench)"
scripts/swarm.sh start 2 --dir "$SW" -- --checkpoint-every 1h >/dev/null
note "- live migration between two nodes on loopback, 5 migrations per row (downtime: freeze to the target's Ready; requests: GET every 2 ms through the first node during the migrations):"
echo >>"$SUMMARY"
target/release/examples/migbench --a "$SW/node1" --b "$SW/node2" | tee -a "$SUMMARY"
stop_swarm
# The same with the request path at real-time priority (node --realtime, and the client too:
# here it shares the cores with the migration's bulk work, as a client on another host does not).
if chrt -r 1 true 2>/dev/null; then
    echo "==> live migration, --realtime 10"
    scripts/swarm.sh start 2 --dir "$SW" -- --checkpoint-every 1h --realtime 10 >/dev/null
    note "- the same with \`--realtime 10\` on both nodes and the client:"
    echo >>"$SUMMARY"
    target/release/examples/migbench --a "$SW/node1" --b "$SW/node2" --realtime 10 | tee -a "$SUMMARY"
    stop_swarm
else
    note "- (--realtime rows skipped: this host refuses real-time priority)"
fi
fi

if want calls; then
export CONTINUUM_BIN=$BIN
SW=$WORK/swarm
echo "==> calls between components"
scripts/swarm.sh start 2 --dir "$SW" -- --checkpoint-every 1h >/dev/null
n1=(--node http://127.0.0.1:7071 --data-dir "$SW/node1")
n2=(--node http://127.0.0.1:7072 --data-dir "$SW/node2")
"$BIN" deploy target/guests/counter.wasm "${n2[@]}" >/dev/null
"$BIN" deploy target/guests/relay.wasm --name near "${n2[@]}" >/dev/null
"$BIN" deploy target/guests/relay.wasm --name far "${n1[@]}" >/dev/null
"$BIN" deploy target/guests/slow.wasm "${n1[@]}" >/dev/null
sleep 1
# The callee's own time per request, from its busy time.
busy() { "$BIN" ls --json "${n2[@]}" | python3 -c 'import json,sys; c=[x for x in json.load(sys.stdin) if x["name"]=="counter"][0]; print(c["busy_ns"], c["calls"])'; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)[\"$1\"])"; }
curl -s "http://127.0.0.1:7072/c/near/time/counter/count?n=2000" >/dev/null # warm up
read -r b0 c0 < <(busy)
near=$(curl -s "http://127.0.0.1:7072/c/near/time/counter/count?n=20000")
read -r b1 c1 < <(busy)
own=$(python3 -c "print(f'{($b1 - $b0) / ($c1 - $c0) / 1000:.1f}')")
far=$(curl -s "http://127.0.0.1:7071/c/far/time/counter/count?n=1000")
note "- a call between components on one node (relay -> counter /count, 20,000 one after the other, timed in the caller): p50 $(echo "$near" | field p50_us) us, p99 $(echo "$near" | field p99_us) us; the callee's own time $own us per request"
note "- the same call to the other node (relay on node 1 -> counter on node 2, 1,000): p50 $(echo "$far" | field p50_us) us, p99 $(echo "$far" | field p99_us) us"
curl -s "http://127.0.0.1:7071/c/slow/after/50" >/dev/null
one=$(curl -s -o /dev/null -w '%{time_total}' "http://127.0.0.1:7071/c/far/to/slow/after/50")
wrk -t1 -c64 -d"${SECS}s" --latency "http://127.0.0.1:7071/c/far/to/slow/after/50" >"$WORK/slow.txt"
rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' "$WORK/slow.txt")
note "- one relay instance, 64 requests waiting on slow /after/50 (wrk -t1 -c64): $rps req/s, p50 $(awk '$1=="50%" {print $2}' "$WORK/slow.txt"), p99 $(awk '$1=="99%" {print $2}' "$WORK/slow.txt"); one request alone takes ${one}s, so a design that serves one request at a time (a blocking call) does $(python3 -c "print(f'{1/$one:.0f}')") req/s: $(python3 -c "print(f'{$rps*$one:.0f}')")x"
stop_swarm
fi

if want arch; then
echo "==> release binaries (scripts/release.sh ${RELEASE_TARGETS:-})"
# shellcheck disable=SC2086 # a list of targets; all four when unset (some 20 minutes each)
scripts/release.sh ${RELEASE_TARGETS:-}
while read -r sum file; do
    note "- $file: $(stat -c %s "target/dist/$file") bytes ($(du -m "target/dist/$file" | cut -f1) MiB), sha256 ${sum:0:16}..."
done <target/dist/SHA256SUMS
echo "==> counter on each engine"
for engine in cranelift pulley; do
    start_node --engine "$engine"
    "$BIN" deploy target/guests/counter.wasm >/dev/null
    wrk -t1 -c1 -d"${SECS}s" --latency -s "$WORK/post.lua" "$URL/c/counter/incr" >"$WORK/e1.txt"
    wrk -t1 -c32 -d"${SECS}s" --latency -s "$WORK/post.lua" "$URL/c/counter/incr" >"$WORK/e32.txt"
    note "- counter POST /incr on $engine: 1 connection p50 $(awk '$1=="50%" {print $2}' "$WORK/e1.txt") p99 $(awk '$1=="99%" {print $2}' "$WORK/e1.txt"); 32 connections $(awk '/Requests\/sec/ {printf "%.0f req/s", $2}' "$WORK/e32.txt"), p50 $(awk '$1=="50%" {print $2}' "$WORK/e32.txt")"
    stop_node
done
echo "==> the same 16 MiB migration to another engine and another architecture"
export CONTINUUM_BIN=$BIN
SW=$WORK/swarm
foreign=aarch64
[ "$(uname -m)" != aarch64 ] || foreign=x86_64
CONTINUUM_NODE_ARGS_3="--engine pulley" scripts/swarm.sh start 4 --dir "$SW" \
    --arch "$(uname -m),$(uname -m),$(uname -m),$foreign" -- --checkpoint-every 1h >/dev/null
for b in 2 3 4; do
    case $b in
        2) what="same architecture and engine ($(uname -m), cranelift)" ;;
        3) what="to a pulley node (same host)" ;;
        4) what="to an $foreign node under qemu-user (cranelift)" ;;
    esac
    note "- 16 MiB, 1 % dirtied, pre-copy, 5 migrations back and forth, $what:"
    target/release/examples/migbench --a "$SW/node1" --b "$SW/node$b" --sizes 16 --dirty 1 \
        --modes pre-copy --runs 5 | tail -n 1 | tee -a "$SUMMARY"
done
stop_swarm
fi

echo
echo "==== summary (for BENCHMARKS.md) ===="
cat "$SUMMARY"
