#!/usr/bin/env bash
# Build the example components (guest/examples/*) into target/guests/<name>.wasm.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed | grep -qx wasm32-wasip1; then
    rustup target add wasm32-wasip1
fi

names=()
for dir in guest/examples/*/; do
    names+=("$(basename "$dir")")
done
args=()
for n in "${names[@]}"; do args+=(-p "$n"); done
cargo build --quiet --profile guest --target wasm32-wasip1 "${args[@]}"

mkdir -p target/guests
for n in "${names[@]}"; do
    cp "${CARGO_TARGET_DIR:-target}/wasm32-wasip1/guest/${n//-/_}.wasm" "target/guests/$n.wasm"
done
ls -l target/guests/*.wasm | awk '{print "built", $NF, $5, "bytes"}'
