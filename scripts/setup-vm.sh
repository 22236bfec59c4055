#!/usr/bin/env bash
# What instance-qemu and its tests need on a Debian 12 machine (idempotent; does nothing when it is
# there): QEMU 10 from bookworm-backports (bookworm's own 7.2 would remove the preinstalled
# backports qemu-utils), iproute2 for the taps, debootstrap/kmod/cpio/busybox-static/xz for
# `make vm-image`. Under CI=true it also builds the guest image the tests boot.
set -euo pipefail

say() { echo "setup-vm: $*"; }

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v qemu-img >/dev/null || need+=(qemu-utils)
for pair in debootstrap:debootstrap depmod:kmod cpio:cpio ip:iproute2 xz:xz-utils mkfs.ext4:e2fsprogs; do
    command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
[ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep 'statically linked' >/dev/null || need+=(busybox-static)
command -v file >/dev/null || need+=(file)

if ((${#need[@]})); then
    if [ "$(id -u)" -ne 0 ]; then
        say "missing ${need[*]}; run as root or install them (the VM tests skip without them)" >&2
        [ "${CI:-}" = true ] && exit 1
        exit 0
    fi
    if ! grep -rqs '^deb .* bookworm-backports ' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        say "adding bookworm-backports to apt's sources"
        echo 'deb http://deb.debian.org/debian bookworm-backports main' >/etc/apt/sources.list.d/backports.list
    fi
    say "installing ${need[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -q \
        --no-install-recommends -t bookworm-backports "${need[@]}"
fi

if [ "${CI:-}" = true ]; then
    bash "$(dirname "$0")/vm-image.sh"
fi
