#!/usr/bin/env bash
# Builds the swarm-node image without a registry (none can be pulled here): debootstrap a minimal
# Debian 12 rootfs, install Debian's docker.io in it, `docker import` it. A container of it, run
# privileged, is one Docker host: the nodes of a swarm grown by InfraKit on one machine (issue 12),
# made by instance-docker like any other instance.
#
#   IMAGE=infrakit/swarm-node TAG=20.10 bash scripts/node-image.sh    (what `make node-image` runs)
#
# Does nothing when $IMAGE:$TAG already exists (FORCE=1 rebuilds). Needs root (debootstrap, chroot).
#
# What a node container needs and what the image does about it:
#   --privileged                           dockerd inside needs it (cgroups, iptables, mounts)
#   /var/lib/docker                        a VOLUME: the engine's storage on the host's disk, not on
#                                          the container's overlay (overlay2 on overlay fails)
#   env INFRAKIT_NODE_INSECURE_REGISTRIES  comma-separated registries reached over plain HTTP
#                                          (the one the plugins are pulled from)
#   env INFRAKIT_NODE_SOCKET_DIR           a directory where dockerd also listens (docker.sock): bind
#                                          a host directory there and the host reaches the node's
#                                          engine on a unix socket (default /run/infrakit-node)
#   env INFRAKIT_NODE_LABELS               comma-separated engine labels (key=value)
# dockerd runs with "experimental": true (plugin services need it) and its own log on stdout.
set -euo pipefail

IMAGE=${IMAGE:-infrakit/swarm-node}
TAG=${TAG:-20.10}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
# Build dir outside the repository: the rootfs is a few hundred MB and holds device nodes.
WORK=${WORK:-/var/tmp/infrakit-node-image}
PACKAGES=(docker.io iproute2 iptables procps ca-certificates)

say() { echo "node-image: $*"; }

if [ -z "${FORCE:-}" ] && docker image inspect "$IMAGE:$TAG" >/dev/null 2>&1; then
    say "$IMAGE:$TAG exists; skipping (FORCE=1 rebuilds)"
    exit 0
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

start=$(date +%s)
rootfs=$WORK/rootfs
if mountpoint -q "$rootfs/proc" 2>/dev/null; then umount "$rootfs/proc"; fi
rm -rf "$WORK"
mkdir -p "$WORK"
cleanup() {
    if mountpoint -q "$rootfs/proc" 2>/dev/null; then umount "$rootfs/proc" || true; fi
    if [ -z "${KEEP_ROOTFS:-}" ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

say "debootstrap --variant=minbase $SUITE (network bound, a few minutes)"
debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
    tail -n 30 "$WORK/debootstrap.log" >&2
    say "debootstrap failed (full log: $WORK/debootstrap.log)" >&2
    trap - EXIT
    exit 1
}
cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
mkdir -p "$rootfs/etc/dpkg/dpkg.cfg.d"
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/01-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
EOF
# No service may start inside the chroot while packages install (docker.io's postinst tries).
printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
chmod 755 "$rootfs/usr/sbin/policy-rc.d"

say "installing ${PACKAGES[*]} in the rootfs"
mount -t proc proc "$rootfs/proc"
chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    sh -c "apt-get update -q && apt-get install -y -q --no-install-recommends ${PACKAGES[*]}" \
    >"$WORK/install.log" 2>&1 || {
    tail -n 30 "$WORK/install.log" >&2
    say "package installation failed" >&2
    exit 1
}
umount "$rootfs/proc"
rm -f "$rootfs/usr/sbin/policy-rc.d"

# The node's init: daemon.json from the environment, then dockerd in the foreground (PID 1).
cat >"$rootfs/usr/local/bin/infrakit-node" <<'EOF'
#!/bin/sh
# A swarm node: dockerd configured from the environment (see scripts/node-image.sh).
set -eu
socket_dir=${INFRAKIT_NODE_SOCKET_DIR:-/run/infrakit-node}
mkdir -p "$socket_dir" /etc/docker
json_list() {
    # "a,b" -> "a", "b"
    printf '%s' "$1" | awk -v RS=, 'NF { gsub(/^[ \t]+|[ \t]+$/, ""); printf "%s\"%s\"", (n++ ? ", " : ""), $0 }'
}
cat >/etc/docker/daemon.json <<JSON
{
  "experimental": true,
  "hosts": ["unix:///var/run/docker.sock", "unix://$socket_dir/docker.sock"],
  "insecure-registries": [$(json_list "${INFRAKIT_NODE_INSECURE_REGISTRIES:-}")],
  "labels": [$(json_list "${INFRAKIT_NODE_LABELS:-}")]
}
JSON
# A stale pid file from a container restart would stop dockerd from starting.
rm -f /var/run/docker.pid /var/run/docker/containerd/containerd.pid
exec dockerd
EOF
chmod 755 "$rootfs/usr/local/bin/infrakit-node"

chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/debconf/*-old \
    "$rootfs"/var/log/apt/* "$rootfs"/var/log/dpkg.log "$rootfs"/var/log/bootstrap.log \
    "$rootfs"/tmp/* "$rootfs"/root/.cache "$rootfs"/var/lib/docker/*
: >"$rootfs/etc/hostname"
: >"$rootfs/etc/resolv.conf"

say "importing $IMAGE:$TAG"
tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'VOLUME /var/lib/docker' \
    --change 'EXPOSE 2377 7946 4789' \
    --change 'CMD ["/usr/local/bin/infrakit-node"]' \
    - "$IMAGE:$TAG" >/dev/null
docker tag "$IMAGE:$TAG" "$IMAGE:latest"
size=$(docker image inspect --format '{{.Size}}' "$IMAGE:$TAG")
say "built $IMAGE:$TAG (also :latest): $((size / 1000000)) MB in $(($(date +%s) - start)) s"
