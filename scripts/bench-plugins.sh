#!/usr/bin/env bash
# Figures for the managed plugins (make bench-plugins): rootfs and compressed layer size per plugin,
# `docker plugin enable` / `disable` time, and the plugin process's RSS when idle.
# Creates infrakit-bench/bench-<name>:bench plugins and removes them at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

export REPO=infrakit-bench NAME_PREFIX=bench- VERSION=bench
export BIN=${BIN:-target/static/x86_64-unknown-linux-gnu/release/infrakit}
export BUILD_DIR=target/plugins-bench
scratch=$(mktemp -d)

# One engine test or benchmark at a time on this machine (they share the engine).
exec 9>/tmp/infrakit-engine-tests.lock
flock 9

cleanup() {
    bash scripts/plugins.sh clean >/dev/null 2>&1 || true
    rm -rf "$scratch"
}
trap cleanup EXIT

now_ms() { date +%s%3N; }

# The host pid of a managed plugin: its cgroup is named after the plugin ID, it is PID 1 inside.
plugin_pid() {
    local id=$1 p
    for p in /proc/[0-9]*; do
        if grep -qs "/$id\$" "$p/cgroup" && grep -qs '^NSpid:.*[[:space:]]1$' "$p/status"; then
            echo "${p#/proc/}"
            return
        fi
    done
}

bash scripts/plugins.sh clean >/dev/null 2>&1 || true
bash scripts/plugins.sh create >/dev/null
docker plugin set "$REPO/${NAME_PREFIX}instance-file:$VERSION" "instances.source=$scratch"
docker plugin set "$REPO/${NAME_PREFIX}group:$VERSION" "store.source=$scratch"

printf '%-16s %10s %12s %10s %11s %9s\n' PLUGIN ROOTFS LAYER.GZ ENABLE DISABLE RSS.IDLE
for name in instance-file flavor-vanilla flavor-combo group; do
    ref="$REPO/$NAME_PREFIX$name:$VERSION"
    rootfs="$BUILD_DIR/$name/rootfs"
    size=$(du -sb "$rootfs" | cut -f1)
    layer=$(tar -C "$rootfs" -cf - . | gzip -c | wc -c)
    t0=$(now_ms)
    docker plugin enable "$ref" >/dev/null
    t1=$(now_ms)
    sleep 2
    id=$(docker plugin inspect -f '{{.Id}}' "$ref")
    pid=$(plugin_pid "$id")
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    t2=$(now_ms)
    docker plugin disable "$ref" >/dev/null
    t3=$(now_ms)
    awk -v n="$name" -v s="$size" -v l="$layer" -v e=$((t1 - t0)) -v d=$((t3 - t2)) -v r="${rss:-0}" \
        'BEGIN { printf "%-16s %8.1fMB %10.1fMB %8dms %9dms %7.1fMB\n", n, s/1048576, l/1048576, e, d, r/1024 }'
done
