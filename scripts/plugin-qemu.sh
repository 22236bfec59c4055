#!/usr/bin/env bash
# Builds instance-qemu's static binary and its managed plugin, $REPO/instance-qemu:$VERSION, through
# scripts/plugins.sh (plugins/instance-qemu/config.json; plugins/instance-qemu/rootfs.sh adds QEMU,
# its libraries and firmware to the rootfs).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=x86_64-unknown-linux-gnu
if [ -z "${SKIP_BUILD:-}" ]; then
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$TARGET" \
        --target-dir target/static -p infrakit-instance-qemu --bin infrakit-instance-qemu
fi
BIN=${BIN:-target/static/$TARGET/release/infrakit} bash scripts/plugins.sh create instance-qemu
