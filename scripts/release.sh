#!/usr/bin/env bash
# Release binaries of `continuum` for the hosts of a continuum, into target/dist/ with SHA-256
# sums:
#
#   scripts/release.sh                 # all four targets below
#   scripts/release.sh aarch64-unknown-linux-musl ...
#   scripts/release.sh --profile release TARGET   # a quicker build, left in target/TARGET/release
#
# x86_64 and aarch64 (Cranelift), riscv64 (Cranelift), 32-bit ARM (Pulley: Cranelift has no
# backend there). musl targets link statically, so a binary runs on a host with any libc.
#
# Cross linking: cargo-zigbuild, with Zig as the C compiler and linker. Both come from PyPI
# (`pip install cargo-zigbuild` brings the `ziglang` package): one install covers every
# target, with musl and glibc for each built in, where Debian's cross packages need a
# toolchain per target and have no musl for foreign architectures.
#
# Each binary is then run once (`continuum --version`), under qemu-user for the foreign ones
# (Debian's qemu-user; installed if missing), so a target that builds but cannot start fails
# here.
set -euo pipefail
cd "$(dirname "$0")/.."

ALL=(
    x86_64-unknown-linux-musl
    aarch64-unknown-linux-musl
    riscv64gc-unknown-linux-musl
    armv7-unknown-linux-musleabihf
)
profile=dist
if [ "${1:-}" = --profile ]; then
    profile=$2
    shift 2
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${ALL[@]}")

if ! command -v cargo-zigbuild > /dev/null; then
    pip install --quiet cargo-zigbuild
fi
installed=$(rustup target list --installed)
for t in "${targets[@]}"; do
    grep -qx "$t" <<< "$installed" || rustup target add "$t"
done

# The emulator for a target ("" for this host's own architecture).
emulator() {
    local arch=${1%%-*}
    case "$arch" in
        "$(uname -m)") echo "" ;;
        armv7) echo qemu-arm ;;
        riscv64gc) echo qemu-riscv64 ;;
        *) echo "qemu-$arch" ;;
    esac
}
need_qemu=0
for t in "${targets[@]}"; do [ -z "$(emulator "$t")" ] || need_qemu=1; done
if [ $need_qemu = 1 ] && ! command -v qemu-aarch64 > /dev/null; then
    apt-get install -y -q --no-install-recommends qemu-user > /dev/null
fi

mkdir -p target/dist
for t in "${targets[@]}"; do
    echo "== $t"
    cargo zigbuild --quiet --locked --profile "$profile" --target "$t" -p continuum --bin continuum
    out="target/$t/$profile/continuum"
    if [ "$profile" = dist ]; then
        cp "$out" "target/dist/continuum-$t"
        out="target/dist/continuum-$t"
    fi
    emu=$(emulator "$t")
    version=$($emu "$out" --version)
    echo "$out: $(stat -c %s "$out") bytes, runs: $version${emu:+ (under $emu)}"
done
[ "$profile" = dist ] || exit 0
(cd target/dist && sha256sum continuum-* > SHA256SUMS)
echo "== target/dist"
ls -l target/dist | awk 'NR > 1 {printf "%-45s %6.1f MiB\n", $NF, $5 / 1048576}'
