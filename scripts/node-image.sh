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
#                                          engine on a unix socket (default /run/infrakit-node);
#                                          "{ip}" in it becomes the node's IPv4 address, so one bind
#                                          serves every node of a group (/run/infrakit-nodes/{ip})
#   env INFRAKIT_NODE_LABELS               comma-separated engine labels (key=value)
# dockerd runs with "experimental": true (plugin services need it) and its own log on stdout.
set -euo pipefail

IMAGE=${IMAGE:-infrakit/swarm-node}
TAG=${TAG:-20.10}
# Build dir outside the repository: the rootfs is a few hundred MB and holds device nodes.
WORK=${WORK:-/var/tmp/infrakit-node-image}
PACKAGES=(docker.io iproute2 iptables procps ca-certificates)

say() { echo "node-image: $*"; }
# shellcheck source=lib/debian-image.sh
. "$(dirname "$0")/lib/debian-image.sh"

image_start
image_bootstrap
image_install "${PACKAGES[@]}"

# The node's init: daemon.json from the environment, then dockerd in the foreground (PID 1).
cat >"$rootfs/usr/local/bin/infrakit-node" <<'EOF'
#!/bin/sh
# A swarm node: dockerd configured from the environment (see scripts/node-image.sh).
set -eu
socket_dir=${INFRAKIT_NODE_SOCKET_DIR:-/run/infrakit-node}
case $socket_dir in
*'{ip}'*)
    ip=$(ip -4 -o addr show scope global | awk '{ split($4, a, "/"); print a[1]; exit }')
    socket_dir=$(printf '%s' "$socket_dir" | sed "s|{ip}|$ip|g") ;;
esac
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
# The mount sources InfraKit's plugins declare (instance-file's and the group's directories): a
# swarm installs plugins but cannot create their mount sources on a node.
mkdir -p "$rootfs/var/lib/infrakit/instances" "$rootfs/var/lib/infrakit/groups"

image_clean
# The engine's own state belongs in the node's volume, not in the image.
rm -rf "$rootfs"/var/lib/docker/*

say "importing $IMAGE:$TAG"
image_tar | docker import \
    --change "LABEL $RECIPE_LABEL=$image_recipe" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'VOLUME /var/lib/docker' \
    --change 'EXPOSE 2377 7946 4789' \
    --change 'CMD ["/usr/local/bin/infrakit-node"]' \
    - "$IMAGE:$TAG" >/dev/null
image_done
