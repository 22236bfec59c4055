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
# Build dir outside the repository: the rootfs is ~250 MB and holds device nodes.
WORK=${WORK:-/var/tmp/infrakit-zk-image}
PACKAGES=(libzookeeper-java default-jre-headless)
CLASSPATH_IN_IMAGE=/etc/zookeeper/conf:/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar

say() { echo "zk-image: $*"; }
# shellcheck source=lib/debian-image.sh
. "$(dirname "$0")/lib/debian-image.sh"

image_start
image_bootstrap
# The JRE's postinst (ca-certificates-java) runs java, which wants /proc: image_install mounts it.
image_install "${PACKAGES[@]}"

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

image_clean

say "importing $IMAGE:$TAG"
image_tar | docker import \
    --change "LABEL $RECIPE_LABEL=$image_recipe" \
    --change "ENV ZOO_CLASSPATH=$CLASSPATH_IN_IMAGE" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'WORKDIR /var/lib/zookeeper' \
    --change 'EXPOSE 2181 2888 3888' \
    --change "CMD [\"sh\", \"-c\", \"exec java -cp \\\"\$ZOO_CLASSPATH\\\" org.apache.zookeeper.server.quorum.QuorumPeerMain /etc/zookeeper/conf/zoo.cfg\"]" \
    - "$IMAGE:$TAG" >/dev/null
image_done
