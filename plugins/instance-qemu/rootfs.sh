#!/usr/bin/env bash
# instance-qemu's rootfs beyond its binary (scripts/plugins.sh runs this with the rootfs directory):
# QEMU (qemu-system-x86_64, qemu-img) and iproute2's ip with every shared library they load (found
# by ldd), and QEMU's firmware (/usr/share/qemu, /usr/share/seabios), all from this machine's
# Debian packages (scripts/setup-vm.sh installs them).
set -euo pipefail
root=${1:?usage: rootfs.sh ROOTFS-DIR}

# A program and every library it loads, at their own paths.
copy_with_libs() {
    local prog lib
    prog=$(command -v "$1") || { echo "instance-qemu rootfs: no $1 (scripts/setup-vm.sh installs it)" >&2; exit 1; }
    prog=$(readlink -f "$prog")
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
if [ -d /usr/share/seabios ]; then cp -aL /usr/share/seabios "$root/usr/share/seabios"; fi
# QEMU's loadable modules (none is needed for -display none, but a build that moved TCG into one
# would need it).
if [ -d /usr/lib/x86_64-linux-gnu/qemu ]; then
    mkdir -p "$root/usr/lib/x86_64-linux-gnu"
    cp -aL /usr/lib/x86_64-linux-gnu/qemu "$root/usr/lib/x86_64-linux-gnu/qemu"
fi
