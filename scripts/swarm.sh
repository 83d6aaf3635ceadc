#!/usr/bin/env bash
# Run N real continuum nodes on 127.0.0.1 (mDNS off), node 1 the bootstrap peer of the others.
#
#   scripts/swarm.sh start N [--dir DIR] [--open] [--arch LIST] [-- NODE ARGS...]
#                                                   start, wait for full views, print a table
#   scripts/swarm.sh stop [--dir DIR]                         stop exactly the nodes it started
#
# The swarm is closed by a key (DIR/swarm.key, made once), so its nodes may deploy to and migrate
# between one another; --open (or your own --swarm-key in NODE ARGS) leaves that out.
# Data dirs are DIR/node1..N (DIR defaults to $TMPDIR/continuum-swarm); HTTP ports are
# CONTINUUM_BASE_PORT+1..+N (default 7070, so 7071..). CONTINUUM_BIN picks the binary
# (default: target/release/continuum, built if missing). Extra NODE ARGS go to every node,
# e.g. `-- --swarm-key swarm.key --label zone=a`; CONTINUUM_NODE_ARGS_<i> adds args to node i.
# --arch x86_64,aarch64,armv7 runs node i on the i-th architecture's binary (riscv64 too), a
# foreign one under Debian's qemu-user (scripts/release.sh --runner: built and installed if
# missing); nodes past the list run on this host's. CONTINUUM_WAIT_PEERS=K waits until each node
# sees K others: by default all the others up to 9 nodes (a node takes 8 neighbours), else one.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 1 ] || usage
cmd=$1; shift
n=0
if [ "$cmd" = start ]; then
    [ $# -ge 1 ] || usage
    n=$1; shift
fi
dir=${TMPDIR:-/tmp}/continuum-swarm
node_args=()
open=0
archs=()
while [ $# -gt 0 ]; do
    case $1 in
        --dir) dir=$2; shift 2 ;;
        --open) open=1; shift ;;
        --arch) IFS=, read -r -a archs <<<"$2"; shift 2 ;;
        --) shift; node_args=("$@"); break ;;
        *) usage ;;
    esac
done
base=${CONTINUUM_BASE_PORT:-7070}

stop() {
    [ -f "$dir/pids" ] || { echo "no swarm running in $dir"; return 0; }
    local pids
    pids=$(cat "$dir/pids")
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 100); do
        local alive=0
        for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    rm -f "$dir/pids"
    echo "stopped $(echo "$pids" | wc -w) node(s) of $dir"
}

case $cmd in
    stop) stop; exit 0 ;;
    start) ;;
    *) usage ;;
esac

[ "$n" -ge 1 ] 2>/dev/null || { echo "N must be a number >= 1"; exit 2; }
if [ -f "$dir/pids" ]; then
    echo "a swarm is already running in $dir; stop it first (scripts/swarm.sh stop --dir $dir)"
    exit 1
fi
bin=${CONTINUUM_BIN:-$PWD/target/release/continuum}
if [ ! -x "$bin" ]; then
    echo "building $bin"
    cargo build --release --quiet -p continuum
fi
# The command that runs node i: this host's binary, or another architecture's under its
# emulator (scripts/release.sh --runner builds it if missing).
runner() {
    local arch=${archs[$(($1 - 1))]:-$(uname -m)}
    if [ "$arch" = "$(uname -m)" ]; then echo "$bin"; else scripts/release.sh --runner "$arch"; fi
}
runners=()
for i in $(seq "$n"); do runners[i]=$(runner "$i"); done

mkdir -p "$dir"
: >"$dir/pids"
if [ $open = 0 ] && [[ " ${node_args[*]} " != *" --swarm-key "* ]]; then
    [ -f "$dir/swarm.key" ] || "$bin" keygen -o "$dir/swarm.key" >/dev/null
    node_args+=(--swarm-key "$dir/swarm.key")
fi

json_field() { sed -n "s/.*\"$2\": \"\([^\"]*\)\".*/\1/p" "$1" | head -n 1; }
p2p_first() { tr -d '\n' <"$1" | sed -n 's/.*"p2p": \[ *"\([^"]*\)".*/\1/p'; }

start_node() {
    local i=$1; shift
    local d=$dir/node$i
    mkdir -p "$d"
    rm -f "$d/node.json"
    local extra_var="CONTINUUM_NODE_ARGS_$i"
    # shellcheck disable=SC2086
    ${runners[i]} node --data-dir "$d" --http "127.0.0.1:$((base + i))" --no-mdns \
        "$@" "${node_args[@]}" ${!extra_var:-} >"$d.log" 2>&1 &
    echo $! >>"$dir/pids"
}

wait_ready() {
    local d=$dir/node$1
    for _ in $(seq 600); do
        [ -f "$d/node.json" ] && return 0
        sleep 0.05
    done
    echo "node $1 did not start; its log:"
    cat "$d.log"
    exit 1
}

started=$(date +%s.%N)
start_node 1
wait_ready 1
bootstrap=$(p2p_first "$dir/node1/node.json")
for i in $(seq 2 "$n"); do start_node "$i" --join "$bootstrap"; done
for i in $(seq 2 "$n"); do wait_ready "$i"; done
launched=$(date +%s.%N)

# One waiter per node, all at once: each returns when its node sees the others it should.
want=$((n - 1)); [ "$n" -le 9 ] || want=1
want=${CONTINUUM_WAIT_PEERS:-$want}
waiters=()
for i in $(seq "$n"); do
    "$bin" status --wait-peers "$want" --timeout 60s --node "http://127.0.0.1:$((base + i))" \
        --data-dir "$dir/node$i" >/dev/null &
    waiters+=($!)
done
for w in "${waiters[@]}"; do
    wait "$w" || { echo "not every node saw $want others within 60 s"; exit 1; }
done
done_at=$(date +%s.%N)

printf '%-5s %-54s %-16s %s\n' NODE "PEER ID" HTTP ARCH
for i in $(seq "$n"); do
    printf '%-5s %-54s %-16s %s\n' "$i" "$(json_field "$dir/node$i/node.json" peer_id)" \
        "$(json_field "$dir/node$i/node.json" http)" "${archs[i - 1]:-$(uname -m)}$([[ ${runners[i]} == qemu-* ]] && echo " (${runners[i]%% *})")"
done
awk -v s="$started" -v l="$launched" -v d="$done_at" -v n="$n" -v w="$want" 'BEGIN {
    printf "%d nodes in %s: every node sees %s %d others %.2f s after the first start (%.2f s after the last node was up)\n", n, "'"$dir"'", (w == n - 1 ? "all" : "at least"), w, d - s, d - l
}'
