#!/usr/bin/env bash
# Assembles instance-qemu's managed plugin context, target/plugins/instance-qemu/{config.json,rootfs/}:
# the static plugin binary, and QEMU (qemu-system-x86_64, qemu-img), iproute2's ip and busybox
# with every shared library they load (found by ldd) and QEMU's firmware (/usr/share/qemu,
# /usr/share/seabios), all from this machine's Debian packages. With CREATE=1 it then runs
# `docker plugin create $REPO/instance-qemu:$VERSION` on the context.
set -euo pipefail
cd "$(dirname "$0")/.."

REPO=${REPO:-infrakit}
VERSION=${VERSION:-$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)}
TARGET=x86_64-unknown-linux-gnu
BIN=target/static/$TARGET/release/infrakit-instance-qemu
CTX=${BUILD_DIR:-target/plugins}/instance-qemu
say() { echo "plugin-qemu: $*"; }

if [ -z "${SKIP_BUILD:-}" ]; then
    say "static binary"
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$TARGET" \
        --target-dir target/static -p infrakit-instance-qemu --bin infrakit-instance-qemu
fi
[ -x "$BIN" ] || { say "no $BIN" >&2; exit 1; }

rm -rf "$CTX"
root=$CTX/rootfs
mkdir -p "$root"/{proc,sys,dev,tmp,run/docker/plugins,var/lib/infrakit/instance-qemu,var/lib/infrakit/vm-image,etc}
cp crates/instance-qemu/plugin/config.json "$CTX/config.json"
install -m 0755 "$BIN" "$root/infrakit-instance-qemu"

# A program and every library it loads, at their own paths.
copy_with_libs() {
    local prog lib
    prog=$(readlink -f "$(command -v "$1")")
    mkdir -p "$root/usr/bin"
    cp -L "$prog" "$root/usr/bin/$(basename "$1")"
    for lib in $(ldd "$prog" | awk '/=>/ {print $3} /^\t\// {print $1}'); do
        [ -e "$root$lib" ] && continue
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
}
for p in qemu-system-x86_64 qemu-img ip; do copy_with_libs "$p"; done
# The dynamic loader at the path the programs name, and where /lib64 points on Debian.
[ -e "$root/lib64" ] || ln -s usr/lib64 "$root/lib64" 2>/dev/null || true
mkdir -p "$root/usr/share"
cp -aL /usr/share/qemu "$root/usr/share/qemu"
[ -d /usr/share/seabios ] && cp -aL /usr/share/seabios "$root/usr/share/seabios"
# QEMU's loadable modules (none is needed for -display none, but a build that moved TCG into one
# would need it).
[ -d /usr/lib/x86_64-linux-gnu/qemu ] && mkdir -p "$root/usr/lib/x86_64-linux-gnu" &&
    cp -aL /usr/lib/x86_64-linux-gnu/qemu "$root/usr/lib/x86_64-linux-gnu/qemu"
echo "$REPO/instance-qemu:$VERSION" >"$root/VERSION"
say "$CTX: $(du -sh "$root" | cut -f1)"

if [ -n "${CREATE:-}" ]; then
    docker plugin rm -f "$REPO/instance-qemu:$VERSION" >/dev/null 2>&1 || true
    docker plugin create "$REPO/instance-qemu:$VERSION" "$CTX"
fi
