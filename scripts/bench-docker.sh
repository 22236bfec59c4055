#!/usr/bin/env bash
# Seconds to get N busybox containers running (`make bench-docker`), same run, same engine:
#   1. infrakit: commit a group of N to the group controller (instance-docker + flavor-vanilla as
#      processes), until N containers of the group run;
#   2. N parallel `docker run -d` (the engine's own limit);
#   3. `docker service create --replicas N` on a single-node swarm (initialised for the run and
#      left again when the engine was not in a swarm before).
# Everything it creates is removed at the end, on failure too.
#
# Environment: BIN (infrakit binary, default target/release/infrakit), N (default 100),
# MAX_PARALLEL (the controller's --max-parallel, default 32), IMAGE (default infrakit-bench/busybox:latest,
# made with `docker import` from /bin/busybox when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/release/infrakit}
N=${N:-100}
MAX_PARALLEL=${MAX_PARALLEL:-32}
IMAGE=${IMAGE:-infrakit-bench/busybox:latest}
RUN=bench-$$-$(date +%s)
TMP=$(mktemp -d)
PIDS=()
SWARM_INITED=
GWBRIDGE_BEFORE=
SERVICE=

now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc -l | xargs printf '%.2f'; }
count() { docker ps -q --filter "label=$1" | wc -l; }
rm_label() {
    local ids
    ids=$(docker ps -aq --filter "label=$1")
    [ -z "$ids" ] || docker rm -f $ids >/dev/null
}

cleanup() {
    set +e
    [ -n "$SERVICE" ] && docker service rm "$SERVICE" >/dev/null 2>&1
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    rm_label "infrakit.group=$RUN"
    rm_label "bench=$RUN"
    if [ -n "$SWARM_INITED" ]; then
        docker swarm leave --force >/dev/null 2>&1
        # swarm init also made docker_gwbridge; leaving does not remove it.
        [ -n "$GWBRIDGE_BEFORE" ] || docker network rm docker_gwbridge >/dev/null 2>&1
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT

# The engine tests' lock: a test run and the benchmark would skew each other's figures.
exec 9>/tmp/infrakit-engine-tests.lock
flock 9

[ -x "$BIN" ] || { echo "bench-docker: no $BIN (cargo build --release)" >&2; exit 1; }
timeout 10 docker version >/dev/null 2>&1 || { echo "bench-docker: no Docker engine answers" >&2; exit 1; }
if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
    mkdir -p "$TMP/rootfs/bin"
    cp /bin/busybox "$TMP/rootfs/bin/busybox"
    for a in sh sleep cat echo true; do ln -s busybox "$TMP/rootfs/bin/$a"; done
    tar -C "$TMP/rootfs" -c . | docker import --change 'CMD ["sh"]' - "$IMAGE" >/dev/null
fi

# 1. infrakit
export INFRAKIT_PLUGINS_DIR=$TMP/plugins INFRAKIT_LOG=warn
mkdir -p "$INFRAKIT_PLUGINS_DIR"
"$BIN" plugin serve instance-docker & PIDS+=($!)
"$BIN" plugin serve flavor-vanilla & PIDS+=($!)
"$BIN" plugin serve group --store "$TMP/store" --poll-interval 1s --max-parallel "$MAX_PARALLEL" & PIDS+=($!)
for s in instance-docker flavor-vanilla group; do
    for _ in $(seq 100); do [ -S "$INFRAKIT_PLUGINS_DIR/$s.sock" ] && break; sleep 0.05; done
done
cat >"$TMP/group.json" <<EOF
{"ID": "$RUN", "Properties": {
  "Allocation": {"Size": $N},
  "Instance": {"Plugin": "instance-docker", "Properties": {"Image": "$IMAGE", "Cmd": ["sleep", "3600"], "StopTimeout": 1}},
  "Flavor": {"Plugin": "flavor-vanilla", "Properties": {}}}}
EOF
t=$(now)
"$BIN" group commit "$TMP/group.json" >/dev/null
until [ "$(count "infrakit.group=$RUN")" -ge "$N" ]; do sleep 0.05; done
infrakit_s=$(since "$t")
"$BIN" group destroy "$RUN" --timeout 120s >/dev/null
rm_label "infrakit.group=$RUN"

# 2. N parallel docker run -d
t=$(now)
seq "$N" | xargs -P "$N" -I{} docker run -d --label "bench=$RUN" --stop-timeout 1 "$IMAGE" sleep 3600 >/dev/null
until [ "$(count "bench=$RUN")" -ge "$N" ]; do sleep 0.05; done
run_s=$(since "$t")
rm_label "bench=$RUN"

# 3. swarm service
if [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" = inactive ]; then
    GWBRIDGE_BEFORE=$(docker network ls -q --filter name=^docker_gwbridge$)
    docker swarm init --advertise-addr 127.0.0.1 >/dev/null
    SWARM_INITED=1
fi
SERVICE=$RUN
t=$(now)
docker service create --detach --name "$SERVICE" --replicas "$N" --container-label "bench=$RUN" \
    --stop-grace-period 1s "$IMAGE" sleep 3600 >/dev/null 2>&1
until [ "$(count "bench=$RUN")" -ge "$N" ]; do sleep 0.1; done
swarm_s=$(since "$t")

printf '%-58s %8s s\n' "infrakit: commit -> $N containers running (max-parallel $MAX_PARALLEL)" "$infrakit_s"
printf '%-58s %8s s\n' "$N parallel docker run -d" "$run_s"
printf '%-58s %8s s\n' "docker service create --replicas $N (single-node swarm)" "$swarm_s"
echo "infrakit / docker run: $(echo "$infrakit_s / $run_s" | bc -l | xargs printf '%.2f')x"
