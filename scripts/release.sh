#!/usr/bin/env bash
# Release binaries of `continuum` for the hosts of a continuum, into target/dist/ with SHA-256
# sums:
#
#   scripts/release.sh                 # the four targets below
#   scripts/release.sh aarch64-unknown-linux-musl ...
#   scripts/release.sh --profile release TARGET   # a quicker build, left in target/TARGET/release
#   scripts/release.sh --runner ARCH   # print how to run a node of ARCH (x86_64, aarch64, armv7,
#                                      # riscv64) here: its --profile release build (made or
#                                      # brought up to date), under its emulator if foreign
#
# x86_64 and aarch64 (Cranelift), riscv64 (Cranelift), 32-bit ARM (Pulley: Cranelift has no
# backend there). musl targets link statically, so a binary runs on a host with any libc. Where
# rustup has no musl standard library for a target (some mirrors lack riscv64 and armv7 musl),
# the script says so and builds the glibc target instead, linked against glibc 2.28 so that it
# runs on any distribution since 2018.
#
# Cross linking: cargo-zigbuild, with Zig as the C compiler and linker. Both come from PyPI
# (`pip install cargo-zigbuild` brings the `ziglang` package): one install covers every
# target, with musl and glibc for each built in, where Debian's cross packages need a
# toolchain per target and have no musl for foreign architectures.
#
# Each binary is then run once (`continuum --version`), under qemu-user for the foreign ones
# (Debian's qemu-user, and for glibc builds the target's libc from libc6-*-cross; installed if
# missing), so a target that builds but cannot start fails here.
set -euo pipefail
# A failed build inside $(build ...) must stop the script, not print a path.
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
# AWS-LC (the mesh's QUIC runs its TLS on it: libp2p-tls picks it; the HTTP/3 side runs on
# ring) built small: without its precomputed tables and its AVX-512 code. ChaCha20-Poly1305
# (the suite libp2p-tls prefers) keeps its AVX2 and NEON code; what this costs a migration's
# transfer or a handshake is not measured yet.
export AWS_LC_SYS_SMALL=1

ALL=(
    x86_64-unknown-linux-musl
    aarch64-unknown-linux-musl
    riscv64gc-unknown-linux-musl
    armv7-unknown-linux-musleabihf
)
profile=dist
runner=
case "${1:-}" in
    --profile) profile=$2; shift 2 ;;
    --runner) runner=$2; profile=release; shift 2 ;;
esac
wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=("${ALL[@]}")

apt_install() { apt-get install -y -q --no-install-recommends "$@" > /dev/null; }

# A target rustup can give us: the one asked for, else its glibc counterpart.
resolve() {
    local t=$1 gnu
    if ! rustup target list --installed | grep -qx "$t" && ! rustup target add "$t" > /dev/null 2>&1; then
        gnu=${t/-musleabihf/-gnueabihf}
        gnu=${gnu/-musl/-gnu}
        echo "no rust-std for $t from rustup here: building $gnu instead (dynamic, glibc >= 2.28)" >&2
        rustup target list --installed | grep -qx "$gnu" || rustup target add "$gnu" >&2
        t=$gnu
    fi
    echo "$t"
}

# The command that runs a target's binary here: nothing for this host's own architecture,
# else its qemu-user emulator (with the target's libc for a glibc build).
emulator() {
    local arch=${1%%-*} emu pkg sysroot=
    case "$arch" in
        "$(uname -m)") return ;;
        armv7) emu=qemu-arm sysroot=arm-linux-gnueabihf pkg=libc6-armhf-cross ;;
        # A RISC-V host with the vector extension, on which Cranelift compiles (the node runs
        # Pulley by default on one without: Wasmtime 48's Cranelift needs V there).
        riscv64gc) emu="qemu-riscv64 -cpu rv64,v=true,vext_spec=v1.0" sysroot=riscv64-linux-gnu pkg=libc6-riscv64-cross ;;
        aarch64) emu=qemu-aarch64 sysroot=aarch64-linux-gnu pkg=libc6-arm64-cross ;;
        *) emu=qemu-$arch sysroot=$arch-linux-gnu pkg=libc6-amd64-cross ;;
    esac
    command -v "${emu%% *}" > /dev/null || apt_install qemu-user
    if [[ $1 == *-gnu* ]]; then
        [ -d "/usr/$sysroot/lib" ] || apt_install "$pkg"
        echo "$emu -L /usr/$sysroot"
    else
        echo "$emu"
    fi
}

# Build one target; print where the binary is.
build() {
    local t=$1 zig_target=$1 out
    command -v cargo-zigbuild > /dev/null || pip install --quiet cargo-zigbuild >&2
    [[ $t != *-gnu* ]] || zig_target=$t.2.28
    cargo zigbuild --quiet --locked --profile "$profile" --target "$zig_target" -p continuum --bin continuum >&2
    out="target/$t/$profile/continuum"
    if [ "$profile" = dist ]; then
        mkdir -p target/dist
        cp "$out" "target/dist/continuum-$t"
        out="target/dist/continuum-$t"
    fi
    echo "$PWD/$out"
}

if [ -n "$runner" ]; then
    case $runner in
        "$(uname -m)") [ -x target/release/continuum ] ||
            cargo build --release --quiet -p continuum >&2
            echo "$PWD/target/release/continuum"; exit 0 ;;
        x86_64) t=x86_64-unknown-linux-musl ;;
        aarch64) t=aarch64-unknown-linux-musl ;;
        armv7) t=armv7-unknown-linux-musleabihf ;;
        riscv64) t=riscv64gc-unknown-linux-musl ;;
        *) echo "unknown architecture $runner (x86_64, aarch64, armv7, riscv64)" >&2; exit 2 ;;
    esac
    t=$(resolve "$t")
    bin=$(build "$t") # a no-op when it is up to date
    echo "$(emulator "$t") $bin"
    exit 0
fi

for t in "${wanted[@]}"; do
    t=$(resolve "$t")
    echo "== $t ($profile)"
    out=$(build "$t")
    emu=$(emulator "$t")
    # shellcheck disable=SC2086
    version=$($emu "$out" --version)
    echo "$out: $(stat -c %s "$out") bytes, runs: $version${emu:+ (under $emu)}"
done
[ "$profile" = dist ] || exit 0
(cd target/dist && sha256sum continuum-* > SHA256SUMS)
echo "== target/dist"
ls -l target/dist/continuum-* | awk '{printf "%-45s %6.1f MiB\n", $NF, $5 / 1048576}'
