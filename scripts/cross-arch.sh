#!/usr/bin/env bash
# The mixed-architecture end-to-end test (tests/e2e/arches.rs) against each architecture
# named, by hand or nightly (CI runs it for aarch64 only, to stay within its time):
#
#   scripts/cross-arch.sh                  # armv7 (Pulley: Cranelift has no 32-bit ARM backend)
#                                          # and riscv64 (Cranelift)
#   scripts/cross-arch.sh aarch64 armv7    # any of x86_64, aarch64, armv7, riscv64
#
# Each foreign node is a release build of its target (scripts/release.sh --runner ARCH)
# under Debian's qemu-user, installed if missing. A run takes a few minutes per architecture
# once built (each build takes a while the first time).
set -euo pipefail
cd "$(dirname "$0")/.."

archs=("$@")
[ ${#archs[@]} -gt 0 ] || archs=(armv7 riscv64)
scripts/build-guests.sh > /dev/null
for arch in "${archs[@]}"; do
    echo "== $arch"
    CONTINUUM_FOREIGN=$(scripts/release.sh --runner "$arch")
    echo "$CONTINUUM_FOREIGN"
    CONTINUUM_FOREIGN=$CONTINUUM_FOREIGN \
        cargo test -p continuum --features fault-injection --test e2e -- arches --nocapture
done
