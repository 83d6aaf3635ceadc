#!/usr/bin/env bash
# Everything CI runs, on a fresh machine too: formatting, lints, the example components, and
# every test (unit, property, and end-to-end tests that start real nodes on 127.0.0.1), and a
# short run of every fuzz target.
set -euo pipefail
cd "$(dirname "$0")/.."

# Tools the checks need; no-ops where they are installed already.
for component in rustfmt clippy; do
    rustup component list --installed | grep -q "^$component" || rustup component add "$component"
done

echo "== cargo fmt --check"
cargo fmt --all -- --check
(cd fuzz && cargo fmt -- --check)

echo "== example components (wasm32-wasip1)"
scripts/build-guests.sh

# The tests run a node built with fault injection (CONTINUUM_FAULT: crashes at chosen points, a
# full disk); release builds never have it. Clippy looks at both builds.
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy --workspace --all-targets --features continuum/fault-injection -- -D warnings

# A node of another architecture for the mixed-architecture test (tests/e2e/arches.rs): this
# host's pair (aarch64 here, x86_64 on an aarch64 host), cross-built by scripts/release.sh and
# run under qemu-user. Only where the emulator cannot be installed does that test skip.
foreign=aarch64
[ "$(uname -m)" != aarch64 ] || foreign=x86_64
echo "== a node of another architecture: $foreign"
if command -v qemu-aarch64 > /dev/null ||
    apt-get install -y -q --no-install-recommends qemu-user > /dev/null; then
    CONTINUUM_FOREIGN=$(scripts/release.sh --runner "$foreign")
    export CONTINUUM_FOREIGN
    echo "$CONTINUUM_FOREIGN"
else
    echo "SKIP: qemu-user cannot be installed here; the mixed-architecture test will skip"
fi

echo "== cargo test"
cargo test --workspace --features continuum/fault-injection

echo "== fuzzing: 10 s of each target (scripts/fuzz.sh SECONDS for longer runs)"
FUZZ_OPTIONAL=1 scripts/fuzz.sh 10
