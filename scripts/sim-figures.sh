#!/usr/bin/env bash
# The simulator's figures for the README: runs each scenario with a fixed seed and writes its
# CSV files and SVG charts to docs/sim/ (committed). Deterministic: the same code gives the
# same files.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p continuum-sim
SIM=target/release/continuum-sim
OUT=docs/sim
mkdir -p "$OUT"
$SIM --scenario convergence --nodes 200 --seed 1 --minutes 0.25 --out "$OUT"
$SIM --scenario churn --nodes 100 --seed 1 --minutes 2 --out "$OUT"
$SIM --scenario roaming --nodes 1000 --seed 1 --minutes 10 --out "$OUT"
$SIM --scenario flash-crowd --nodes 400 --seed 1 --minutes 3 --out "$OUT"
$SIM --scenario roaming --nodes 1000 --seed 1 --minutes 10 --faults --out "$OUT/faults"
$SIM --scenario convergence --nodes 2000 --seed 1 --minutes 0.25 --scope neighbours --out "$OUT"
