#!/usr/bin/env bash
# `make vm-image`: the guest that instance-qemu boots, made from Debian packages only.
#
#   vmlinux     the kernel of linux-image-amd64, taken out with dpkg-deb -x and unpacked from its
#               xz payload (an uncompressed kernel boots about twice as fast under TCG)
#   initrd.gz   busybox-static and the kernel's modules for virtio, ext4, fw_cfg and the ACPI power
#               button; its /init loads them, sets the static address, copies what the plugin passes
#               over fw_cfg to /run/infrakit and hands over to busybox init on the root disk
#   rootfs.raw  debootstrap --variant=minbase, packed with mkfs.ext4 -d (no loop device), with
#               /usr/local/sbin/init (busybox init), /sbin/infrakit-boot (runs the boot script and
#               reports on the serial console) and an acpid that powers off on the ACPI button
#
# The image lands in $VM_IMAGE_DIR/<recipe hash>/ and $VM_IMAGE_DIR/current points at it; a second
# run with the same recipe (this script, the variant, the suite) does nothing. FORCE=1 rebuilds.
# VARIANT=zookeeper adds Debian's zookeeper (and a headless JRE). Needs root (debootstrap).
set -euo pipefail

VM_IMAGE_DIR=${VM_IMAGE_DIR:-/var/lib/infrakit/vm-image}
VARIANT=${VARIANT:-base}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SIZE=${SIZE:-}

say() { echo "vm-image: $*"; }

case "$VARIANT" in
base) include="" ; default_size=400M ;;
zookeeper) include="zookeeper,default-jre-headless,netcat-openbsd" ; default_size=900M ;;
*) say "unknown VARIANT '$VARIANT' (base or zookeeper)" >&2; exit 2 ;;
esac
SIZE=${SIZE:-$default_size}

recipe=$( { cat "$0"; echo "$VARIANT $SUITE $SIZE"; } | sha256sum | cut -c1-16)
out=$VM_IMAGE_DIR/$VARIANT-$recipe
link=$VM_IMAGE_DIR/$([ "$VARIANT" = base ] && echo current || echo "$VARIANT")
if [ -z "${FORCE:-}" ] && [ -s "$out/rootfs.raw" ] && [ -s "$out/vmlinux" ] && [ -s "$out/initrd.gz" ]; then
    ln -sfn "$(basename "$out")" "$link"
    say "$out exists (recipe $recipe); skipping (FORCE=1 rebuilds)"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    say "needs root (debootstrap); run it with sudo" >&2
    exit 1
fi
for tool in debootstrap mkfs.ext4 cpio depmod modprobe busybox xz; do
    command -v "$tool" >/dev/null || { say "missing $tool: run scripts/setup-vm.sh" >&2; exit 1; }
done
busybox_bin=/bin/busybox
if ! file -L "$busybox_bin" 2>/dev/null | grep 'statically linked' >/dev/null && [ -x /usr/bin/busybox ]; then
    busybox_bin=$(readlink -f "$(command -v busybox)")
fi

started=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/var/tmp}/vm-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$VM_IMAGE_DIR"

# --- the kernel and its modules -------------------------------------------------------------
say "fetching the kernel package (linux-image-amd64)"
kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ && !found {print $2; found = 1}')
[ -n "$kpkg" ] || { say "cannot resolve linux-image-amd64 to a kernel package (apt-get update?)" >&2; exit 1; }
(cd "$work" && apt-get download -q "$kpkg" >/dev/null 2>&1) || { say "apt-get download $kpkg failed" >&2; exit 1; }
mkdir "$work/kernel"
dpkg-deb -x "$work"/"$kpkg"_*.deb "$work/kernel"
kver=$(ls "$work/kernel/lib/modules")
vmlinuz=$work/kernel/boot/vmlinuz-$kver
# The bzImage carries the kernel as an xz stream: start at its magic, ignore what follows it.
offset=$(LC_ALL=C grep -m 1 -aboP '\xfd7zXZ\x00' "$vmlinuz" | cut -d: -f1)
tail -c "+$((offset + 1))" "$vmlinuz" | xz -dc >"$work/vmlinux" 2>/dev/null || true
head -c 4 "$work/vmlinux" | grep -q ELF || { say "could not unpack vmlinux from $vmlinuz" >&2; exit 1; }

# --- the initramfs ---------------------------------------------------------------------------
say "initramfs for $kver"
depmod -b "$work/kernel" "$kver"
ird=$work/initrd
mkdir -p "$ird"/{bin,dev,proc,sys,newroot,lib/modules}
cp "$busybox_bin" "$ird/bin/busybox"
: >"$ird/modules"
# Dependency order, each once: what modprobe would load, loaded by busybox insmod at boot.
for module in virtio_pci virtio_blk virtio_net ext4 qemu_fw_cfg button evdev; do
    # builtin ones print "builtin NAME", which is skipped; an unknown name fails the build.
    modprobe -d "$work/kernel" -S "$kver" --show-depends "$module"
done | awk '$1 == "insmod" {print $2}' | while read -r ko; do
        name=$(basename "$ko")
        grep -qx "$name" "$ird/modules" && continue
        cp "$ko" "$ird/lib/modules/$name"
        echo "$name" >>"$ird/modules"
    done
grep -q '^virtio_blk' "$ird/modules" || { say "virtio_blk not found among $kver's modules" >&2; exit 1; }
cat >"$ird/init" <<'INIT'
#!/bin/busybox sh
# infrakit guest initramfs: modules, root disk, static address, fw_cfg → /run/infrakit, busybox init.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules); do insmod "/lib/modules/$m" 2>/dev/null; done
fail() { echo "infrakit-guest: FAILED: $*" >/dev/console; sleep 1; poweroff -f; }
n=0
while [ ! -b /dev/vda ]; do n=$((n + 1)); [ $n -gt 100 ] && fail "no /dev/vda"; sleep 0.1; done
mount -t ext4 -o rw /dev/vda /newroot || fail "cannot mount /dev/vda"
mount -t tmpfs -o mode=0755 run /newroot/run
mkdir -p /newroot/run/infrakit
cfg=/sys/firmware/qemu_fw_cfg/by_name/opt/infrakit
for f in meta init tags; do
    [ -r "$cfg/$f/raw" ] && cat "$cfg/$f/raw" >"/newroot/run/infrakit/$f"
done
chmod 700 /newroot/run/infrakit
INFRAKIT_IP= INFRAKIT_PREFIX= INFRAKIT_GATEWAY=
[ -r /newroot/run/infrakit/meta ] && . /newroot/run/infrakit/meta
ip link set lo up
ip link set eth0 up 2>/dev/null
if [ -n "$INFRAKIT_IP" ]; then
    ip addr add "$INFRAKIT_IP/${INFRAKIT_PREFIX:-24}" dev eth0
    [ -n "$INFRAKIT_GATEWAY" ] && ip route add default via "$INFRAKIT_GATEWAY"
fi
mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot /usr/local/sbin/init
INIT
chmod 755 "$ird/init"
(cd "$ird" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initrd.gz"

# --- the root filesystem ---------------------------------------------------------------------
say "debootstrap --variant=minbase $SUITE${include:+ with $include} (network bound)"
rootfs=$work/rootfs
debootstrap --variant=minbase ${include:+--include="$include"} "$SUITE" "$rootfs" "$MIRROR" \
    >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; say "debootstrap failed" >&2; exit 1; }
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
install -m 755 "$busybox_bin" "$rootfs/usr/local/bin/busybox"
ln -sf ../bin/busybox "$rootfs/usr/local/sbin/init"
cat >"$rootfs/etc/inittab" <<'TAB'
::sysinit:/sbin/infrakit-boot
::respawn:/usr/local/bin/busybox acpid -f -c /etc/acpi -l /dev/null
::shutdown:/usr/local/bin/busybox echo infrakit-guest: powering off
::shutdown:/usr/local/bin/busybox sync
TAB
mkdir -p "$rootfs/etc/acpi/PWRF"
printf '#!/bin/sh\nexec /usr/local/bin/busybox poweroff\n' >"$rootfs/etc/acpi/PWRF/00000080"
chmod 755 "$rootfs/etc/acpi/PWRF/00000080"
cat >"$rootfs/sbin/infrakit-boot" <<'BOOT'
#!/bin/sh
# Runs once at boot (busybox init's sysinit): the VM's boot script, with reports on the serial
# console that the host reads (`infrakit-guest: ...` lines).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
INFRAKIT_ID= INFRAKIT_HOSTNAME= INFRAKIT_IP=
[ -r /run/infrakit/meta ] && . /run/infrakit/meta
[ -n "$INFRAKIT_HOSTNAME" ] && hostname "$INFRAKIT_HOSTNAME"
echo "infrakit-guest: up id=$INFRAKIT_ID ip=$INFRAKIT_IP uptime=$(cut -d' ' -f1 /proc/uptime)" >/dev/console
# The script runs in the background: one that ends by exec'ing a server (flavor-zookeeper's does)
# must not hold up busybox init, which starts acpid (the ACPI power button) after this returns.
if [ -s /run/infrakit/init ]; then
    chmod 700 /run/infrakit/init
    (
        if head -c 2 /run/infrakit/init | grep -q '#!'; then
            /run/infrakit/init </dev/null >/dev/console 2>&1
        else
            /bin/sh /run/infrakit/init </dev/null >/dev/console 2>&1
        fi
        echo "infrakit-guest: init exited $? id=$INFRAKIT_ID" >/dev/console
    ) &
else
    echo "infrakit-guest: no init id=$INFRAKIT_ID" >/dev/console
fi
BOOT
chmod 755 "$rootfs/sbin/infrakit-boot"
echo "infrakit-vm" >"$rootfs/etc/hostname"

say "packing the root filesystem ($SIZE, mkfs.ext4 -d)"
mkfs.ext4 -q -F -L infrakit-root -d "$rootfs" "$work/rootfs.raw" "$SIZE"

rm -rf "$out.new"
mkdir -p "$out.new"
mv "$work/vmlinux" "$work/initrd.gz" "$work/rootfs.raw" "$out.new/"
echo "$kver" >"$out.new/kernel-version"
rm -rf "$out"
mv "$out.new" "$out"
ln -sfn "$(basename "$out")" "$link"
say "done in $(($(date +%s) - started)) s: $out ($(du -sh "$out" | cut -f1)); $link -> $(basename "$out")"
