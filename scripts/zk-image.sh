#!/usr/bin/env bash
# Builds a ZooKeeper image without a registry (none can be pulled here): debootstrap a minimal
# Debian 12 rootfs, install Debian's ZooKeeper and a headless JRE in it, `docker import` it.
#
#   IMAGE=infrakit/zookeeper TAG=3.8.0 bash scripts/zk-image.sh     (what `make zk-image` runs)
#
# Does nothing when $IMAGE:$TAG already exists (FORCE=1 rebuilds). Needs root (debootstrap, chroot).
#
# What the image holds, and what flavor-zookeeper's Init relies on:
#   /usr/share/java/zookeeper.jar          the server (Debian's libzookeeper-java); its manifest
#                                          Class-Path names every dependency jar but the logging one
#   /usr/share/java/{slf4j-log4j12,log4j-1.2}.jar   logging, so they go on the class path too
#   /etc/zookeeper/conf/log4j.properties   logs to the console (docker logs), nothing to files
#   /etc/zookeeper/conf, /var/lib/zookeeper  where the Init writes zoo.cfg and myid
#   env ZOO_CLASSPATH                      the class path above, so the Init needs no jar names
#   CMD                                    a standalone server (a quick `docker run` check)
#
# Why libzookeeper-java and not the `zookeeper` package: `zookeeper` only adds the zkServer.sh
# wrappers, example configs and the ZooInspector GUI, and depends on the full `default-jre`, which
# pulls GTK and X11 (about 100 MB more). The server classes are the same package's.
set -euo pipefail

IMAGE=${IMAGE:-infrakit/zookeeper}
TAG=${TAG:-3.8.0}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
# Build dir outside the repository: the rootfs is ~250 MB and holds device nodes.
WORK=${WORK:-/var/tmp/infrakit-zk-image}
PACKAGES=(libzookeeper-java default-jre-headless)
CLASSPATH_IN_IMAGE=/etc/zookeeper/conf:/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar

say() { echo "zk-image: $*"; }

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
# A half-built rootfs from an interrupted run would make debootstrap fail or mix versions.
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

# Security and point-release updates too: the JRE gets most of its fixes there.
cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
# No docs or man pages for a server image (copyright files stay).
mkdir -p "$rootfs/etc/dpkg/dpkg.cfg.d"
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/01-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
EOF

say "installing ${PACKAGES[*]} in the rootfs"
# The JRE's postinst (ca-certificates-java) runs java, which wants /proc.
mount -t proc proc "$rootfs/proc"
chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    sh -c "apt-get update -q && apt-get install -y -q --no-install-recommends ${PACKAGES[*]}" \
    >"$WORK/install.log" 2>&1 || {
    tail -n 30 "$WORK/install.log" >&2
    say "package installation failed" >&2
    exit 1
}
umount "$rootfs/proc"

for jar in ${CLASSPATH_IN_IMAGE//:/ }; do
    case $jar in *.jar) [ -e "$rootfs$jar" ] || { say "missing $jar in the rootfs" >&2; exit 1; } ;; esac
done

mkdir -p "$rootfs/etc/zookeeper/conf" "$rootfs/var/lib/zookeeper"
# Console only: a container's logs belong to `docker logs`; files would grow inside the container.
cat >"$rootfs/etc/zookeeper/conf/log4j.properties" <<'EOF'
log4j.rootLogger=INFO, CONSOLE
log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender
log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout
log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} - %-5p [%t:%C{1}@%L] - %m%n
EOF
# A standalone default, so `docker run IMAGE` alone starts a working server.
cat >"$rootfs/etc/zookeeper/conf/zoo.cfg" <<'EOF'
tickTime=2000
dataDir=/var/lib/zookeeper
clientPort=2181
4lw.commands.whitelist=ruok,srvr,stat,mntr
EOF

# Caches and logs of the build are no use in the image.
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/debconf/*-old \
    "$rootfs"/var/log/apt/* "$rootfs"/var/log/dpkg.log "$rootfs"/var/log/bootstrap.log \
    "$rootfs"/tmp/* "$rootfs"/root/.cache
# Docker supplies these at run time.
: >"$rootfs/etc/hostname"
: >"$rootfs/etc/resolv.conf"

say "importing $IMAGE:$TAG"
tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change "ENV ZOO_CLASSPATH=$CLASSPATH_IN_IMAGE" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'WORKDIR /var/lib/zookeeper' \
    --change 'EXPOSE 2181 2888 3888' \
    --change "CMD [\"sh\", \"-c\", \"exec java -cp \\\"\$ZOO_CLASSPATH\\\" org.apache.zookeeper.server.quorum.QuorumPeerMain /etc/zookeeper/conf/zoo.cfg\"]" \
    - "$IMAGE:$TAG" >/dev/null
docker tag "$IMAGE:$TAG" "$IMAGE:latest"
size=$(docker image inspect --format '{{.Size}}' "$IMAGE:$TAG")
say "built $IMAGE:$TAG (also :latest): $((size / 1000000)) MB in $(($(date +%s) - start)) s"
