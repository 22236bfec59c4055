#!/usr/bin/env bash
# The seed's ZooKeeper demo on VMs (`make test-vm`, root, by hand: several minutes under TCG):
# a network namespace with the bridge br-zk (10.123.0.1/24), instance-qemu, flavor-zookeeper and
# the group controller run inside it, examples/zookeeper-vm.json committed; waits for a quorum,
# kills the leader's QEMU, waits for the replacement at the same address and the quorum back,
# rolls a memory change (MEMORY, default 416) one VM at a time, destroys the group, prints figures
# and removes everything. Needs `make vm-image-zk` and the debug binaries (cargo build).
set -euo pipefail
cd "$(dirname "$0")/.."
NS=${NS:-ikqdemo-zk}
WORK=$(mktemp -d /tmp/ikqdemo-zk.XXXXXX)
BIN=${BIN:-target/debug/infrakit}
QEMU_PLUGIN=${QEMU_PLUGIN:-target/debug/infrakit-instance-qemu}
MEMORY=${MEMORY:-416}
IPS=(10.123.0.11 10.123.0.12 10.123.0.13)
export INFRAKIT_PLUGINS_DIR=$WORK/plugins INFRAKIT_LOG=${INFRAKIT_LOG:-warn}
mkdir -p "$INFRAKIT_PLUGINS_DIR"
pids=()
say() { echo "[$(date +%T)] zk-vm: $*"; }
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in $(ip netns pids "$NS" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
in_ns() { ip netns exec "$NS" "$@"; }
mode() { echo srvr | in_ns /bin/busybox nc -w 2 "$1" 2181 2>/dev/null | sed -n 's/^Mode: //p'; }
serving() { # how many members serve (leader or follower)
    local ip n=0
    for ip in "${IPS[@]}"; do
        case $(mode "$ip") in leader | follower) n=$((n + 1)) ;; esac
    done
    echo "$n"
}
quorum() { # the leader's address once the ensemble is whole: one leader, the others followers
    local ip m leader="" followers=0
    for ip in "${IPS[@]}"; do
        m=$(mode "$ip")
        [ "$m" = leader ] && leader=$ip
        [ "$m" = follower ] && followers=$((followers + 1))
    done
    [ -n "$leader" ] && [ "$followers" -eq $((${#IPS[@]} - 1)) ] && echo "$leader"
}
wait_quorum() {
    local t0=$SECONDS leader
    while ! leader=$(quorum); do
        [ $((SECONDS - t0)) -lt 900 ] || { say "no quorum after 900 s"; exit 1; }
        sleep 2
    done
    echo "$leader"
}

ip netns del "$NS" 2>/dev/null || true
ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" link add br-zk type bridge
ip -n "$NS" addr add 10.123.0.1/24 dev br-zk
ip -n "$NS" link set br-zk up
in_ns "$QEMU_PLUGIN" --state-dir "$WORK/state" --accel tcg >"$WORK/qemu.log" 2>&1 & pids+=($!)
in_ns "$BIN" plugin serve flavor-zookeeper >"$WORK/zk.log" 2>&1 & pids+=($!)
in_ns "$BIN" plugin serve group --store "$WORK/store" --poll-interval 2s --health-interval 2s >"$WORK/group.log" 2>&1 & pids+=($!)
for s in instance-qemu flavor-zookeeper group; do
    until [ -S "$INFRAKIT_PLUGINS_DIR/$s.sock" ]; do sleep 0.2; done
done

t0=$SECONDS
"$BIN" group commit examples/zookeeper-vm.json
leader=$(wait_quorum)
formed=$((SECONDS - t0))
say "quorum formed $formed s after commit; leader $leader"

vm=$(grep -l "\"LogicalID\": \"$leader\"" "$WORK"/state/*/record.json | xargs dirname)
t0=$SECONDS
kill -9 "$(cat "$vm/qemu.pid")"
say "killed the leader's QEMU ($(basename "$vm"))"
until grep -l "\"LogicalID\": \"$leader\"" "$WORK"/state/*/record.json 2>/dev/null | grep -qv "^$vm/"; do sleep 0.5; done
say "a new VM at $leader after $((SECONDS - t0)) s"
leader=$(wait_quorum)
healed=$((SECONDS - t0))
say "ensemble whole again (3 serving) $healed s after the kill; leader $leader"

sed "s/\"Memory\": 384/\"Memory\": $MEMORY/" examples/zookeeper-vm.json >"$WORK/zk-vm-2.json"
t0=$SECONDS
"$BIN" group commit "$WORK/zk-vm-2.json"
lost=0 probes=0
until [ "$(grep -l "\"Memory\": $MEMORY" "$WORK"/state/*/record.json 2>/dev/null | wc -l)" -eq 3 ] && quorum >/dev/null; do
    probes=$((probes + 1))
    [ "$(serving)" -ge 2 ] || lost=$((lost + 1))
    [ $((SECONDS - t0)) -lt 1800 ] || { say "the rolling update did not finish in 1800 s"; exit 1; }
    sleep 2
done
rolled=$((SECONDS - t0))
say "rolling update to $MEMORY MiB done in $rolled s; probes (every ~2 s) with fewer than 2 members serving, i.e. no quorum: $lost of $probes (an election when the leader is replaced)"

"$BIN" group destroy zk-vm --timeout 300s
say "destroyed; VMs left: $(ls "$WORK/state" | wc -l)"
say "figures: ensemble whole after commit $formed s; after killing the leader $healed s; rolling update $rolled s (no quorum in $lost of $probes probes)"
