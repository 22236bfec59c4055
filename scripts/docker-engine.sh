#!/usr/bin/env bash
# Makes sure a Docker Engine answers on /var/run/docker.sock, for the tests that need one.
# "Answers" is `docker version` within 10 s: `docker info` (/info) can hang for minutes on a busy
# engine (seen here while a swarm service was being torn down), which must not hang CI.
# Installs Debian's docker.io (and docker-registry, busybox-static for test images) when missing,
# starts dockerd when none answers, waits until it does. Idempotent. Logs to $DOCKERD_LOG.
set -euo pipefail

DOCKERD_LOG=${DOCKERD_LOG:-/var/log/infrakit-dockerd.log}
PACKAGES=(docker.io docker-registry busybox-static)

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if [ "$(id -u)" -ne 0 ]; then
        echo "docker-engine: need ${missing[*]} and am not root; install them or run as root" >&2
        exit 1
    fi
    echo "docker-engine: installing ${missing[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi

if timeout 10 docker version >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "docker-engine: no engine answers and only root can start one" >&2
    exit 1
fi
echo "docker-engine: starting dockerd (log: $DOCKERD_LOG)"
# The registry package starts its own service on some systems; the tests start theirs by hand.
nohup dockerd >>"$DOCKERD_LOG" 2>&1 &
for _ in $(seq 1 60); do
    if timeout 10 docker version >/dev/null 2>&1; then
        echo "docker-engine: ready"
        exit 0
    fi
    sleep 1
done
echo "docker-engine: dockerd did not answer within 60 s; its log:" >&2
tail -n 50 "$DOCKERD_LOG" >&2 || true
exit 1
