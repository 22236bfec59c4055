# Shared by scripts/zk-image.sh and scripts/node-image.sh: a Debian image built without a registry
# (none can be pulled here): debootstrap a minimal rootfs, install packages in it, clean it,
# `docker import` it. Source it after setting IMAGE, TAG, WORK and defining say(); then call
# image_start (exits when the image exists), image_bootstrap, image_install PACKAGE..., the
# script's own files, image_clean, its `docker import` of image_tar, and image_done.

SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}

# Nothing to do when $IMAGE:$TAG exists and was made by this recipe (the label RECIPE_LABEL holds
# the hash of the calling script and this library, so an image left by an older recipe is rebuilt;
# FORCE=1 always rebuilds); needs root; a fresh $WORK, removed on exit unless KEEP_ROOTFS is set.
RECIPE_LABEL=infrakit.image.recipe
image_start() {
    image_recipe=$(cat "$0" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)
    local have
    have=$(docker image inspect -f "{{index .Config.Labels \"$RECIPE_LABEL\"}}" "$IMAGE:$TAG" 2>/dev/null || true)
    if [ -z "${FORCE:-}" ] && [ "$have" = "$image_recipe" ]; then
        say "$IMAGE:$TAG exists (recipe $image_recipe); skipping (FORCE=1 rebuilds)"
        exit 0
    fi
    if [ -n "$have" ] || docker image inspect "$IMAGE:$TAG" >/dev/null 2>&1; then
        say "$IMAGE:$TAG was made by another recipe (${have:-unlabelled}); rebuilding"
    fi
    if [ "$(id -u)" -ne 0 ]; then
        say "needs root (debootstrap and chroot); run it with sudo" >&2
        exit 1
    fi
    if ! command -v debootstrap >/dev/null; then
        say "installing debootstrap"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap
    fi
    image_started=$(date +%s)
    rootfs=$WORK/rootfs
    # A half-built rootfs from an interrupted run would make debootstrap fail or mix versions.
    if mountpoint -q "$rootfs/proc" 2>/dev/null; then umount "$rootfs/proc"; fi
    rm -rf "$WORK"
    mkdir -p "$WORK"
    trap image_cleanup EXIT
}

image_cleanup() {
    if mountpoint -q "$rootfs/proc" 2>/dev/null; then umount "$rootfs/proc" || true; fi
    if [ -z "${KEEP_ROOTFS:-}" ]; then rm -rf "$WORK"; fi
}

# debootstrap minbase, with security and point-release updates, without docs or man pages.
image_bootstrap() {
    say "debootstrap --variant=minbase $SUITE (network bound, a few minutes)"
    debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
        tail -n 30 "$WORK/debootstrap.log" >&2
        say "debootstrap failed (full log: $WORK/debootstrap.log)" >&2
        trap - EXIT
        exit 1
    }
    cat >"$rootfs/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
SOURCES
    mkdir -p "$rootfs/etc/dpkg/dpkg.cfg.d"
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/01-nodoc" <<'NODOC'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
NODOC
}

# Installs the packages (no recommends) in the rootfs, with /proc mounted (some postinsts run
# programs that want it) and no service started inside the chroot.
image_install() {
    say "installing $* in the rootfs"
    printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
    chmod 755 "$rootfs/usr/sbin/policy-rc.d"
    mount -t proc proc "$rootfs/proc"
    chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
        sh -c "apt-get update -q && apt-get install -y -q --no-install-recommends $*" \
        >"$WORK/install.log" 2>&1 || {
        tail -n 30 "$WORK/install.log" >&2
        say "package installation failed" >&2
        exit 1
    }
    umount "$rootfs/proc"
    rm -f "$rootfs/usr/sbin/policy-rc.d"
}

# Caches and logs of the build out; the files Docker supplies at run time emptied.
image_clean() {
    chroot "$rootfs" apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/debconf/*-old \
        "$rootfs"/var/log/apt/* "$rootfs"/var/log/dpkg.log "$rootfs"/var/log/bootstrap.log \
        "$rootfs"/tmp/* "$rootfs"/root/.cache
    : >"$rootfs/etc/hostname"
    : >"$rootfs/etc/resolv.conf"
}

# The rootfs as a tar on stdout, for `docker import - IMAGE`.
image_tar() {
    tar --numeric-owner -C "$rootfs" -c .
}

# Tags :latest too and says what was built.
image_done() {
    docker tag "$IMAGE:$TAG" "$IMAGE:latest"
    local size
    size=$(docker image inspect --format '{{.Size}}' "$IMAGE:$TAG")
    say "built $IMAGE:$TAG (also :latest): $((size / 1000000)) MB in $(($(date +%s) - image_started)) s"
}
