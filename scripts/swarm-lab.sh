#!/usr/bin/env bash
# A swarm of several Docker engines on this one machine, for development and tests
# (what `make swarm-lab` / `make swarm-lab-down` run). Needs root.
#
#   scripts/swarm-lab.sh up       bring the lab up (a healthy lab of the same shape is kept;
#                                 anything else, a crashed run's leftovers included, is swept first)
#   scripts/swarm-lab.sh down     remove everything the lab made, and only that (harmless when none)
#   scripts/swarm-lab.sh status   the nodes, their roles and whether each answers
#   scripts/swarm-lab.sh exec NODE -- CMD...   run CMD inside NODE's namespaces (its own
#                                 /var/run/docker.sock and /run/docker/plugins)
#
# Each node is a dockerd in a network namespace of its own (a veth into the bridge $BRIDGE,
# $SUBNET.1/24 on the host, node K at $SUBNET.(10+K)) and a mount namespace of its own (a private
# tmpfs on /run, a fresh sysfs, its own /etc/docker for a distinct engine ID), kept alive by a holder
# process (`sleep infinity`). The host reaches node K's engine at unix://$LAB_RUN/nodeK/docker.sock.
# The first MANAGERS nodes are managers (node1 inits the swarm), the others workers. A registry
# (Debian's docker-registry) listens on $SUBNET.1:5000, insecure (plain HTTP), anonymous.
# $LAB_RUN/lab.env (shell) and $LAB_RUN/lab.json say all of that for tests and tools.
#
# Environment: NODES (4, managers included), MANAGERS (3), SUBNET (10.99.0: the first three octets
# of the bridge's /24). Data in $LAB_DATA (/var/lib/infrakit-lab), sockets and state in $LAB_RUN.
# Every name it makes starts with infrakit-lab (namespaces infrakit-lab-nodeK, bridge infrakit-lab0,
# veths ikl-nodeK, the iptables rule's comment, containers' cgroup parent /infrakit-lab/nodeK);
# down also removes the cgroups of the nodes' plugins (named by plugin ID) that it saw them in.
set -euo pipefail

NODES=${NODES:-4}
MANAGERS=${MANAGERS:-3}
# Fixed, not settable: down removes them whole.
LAB_DATA=/var/lib/infrakit-lab
LAB_RUN=/run/infrakit-lab
SUBNET=${SUBNET:-10.99.0}
PREFIX=infrakit-lab
BRIDGE=${PREFIX}0
REGISTRY=$SUBNET.1:5000
LOCK=/tmp/infrakit-lab.lock
PACKAGES=(docker.io docker-registry iproute2 iptables util-linux)
# Generous deadlines (seconds): a busy 2-core machine is slow, a healthy lab is fast.
ENGINE_DEADLINE=${ENGINE_DEADLINE:-60}
SWARM_DEADLINE=${SWARM_DEADLINE:-90}

say() { echo "swarm-lab: $*"; }
die() {
    echo "swarm-lab: $*" >&2
    exit 1
}

now() { echo "${EPOCHREALTIME/,/.}"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

node_name() { echo "node$1"; }
netns_of() { echo "$PREFIX-$1"; }
ip_of() { echo "$SUBNET.$((10 + ${1#node}))"; }
sock_of() { echo "$LAB_RUN/$1/docker.sock"; }
host_of() { echo "unix://$(sock_of "$1")"; }
role_of() { if ((${1#node} <= MANAGERS)); then echo manager; else echo worker; fi; }
dk() {
    local node=$1
    shift
    timeout 20 docker -H "$(host_of "$node")" "$@"
}

# --- prerequisites -------------------------------------------------------------------------------

check_shape() {
    [[ $NODES =~ ^[0-9]+$ && $MANAGERS =~ ^[0-9]+$ ]] || die "NODES and MANAGERS must be numbers (got NODES=$NODES MANAGERS=$MANAGERS)"
    ((MANAGERS >= 1)) || die "MANAGERS must be at least 1 (got $MANAGERS)"
    ((NODES >= MANAGERS)) || die "NODES ($NODES) counts every node, managers included: it must be at least MANAGERS ($MANAGERS)"
    ((NODES <= 40)) || die "NODES=$NODES: at most 40 nodes"
    [[ $SUBNET =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "SUBNET must be three octets such as 10.99.0 (got $SUBNET)"
}

need_root() {
    [ "$(id -u)" -eq 0 ] || die "needs root (it makes network namespaces, mounts and a bridge): run it with sudo"
}

ensure_packages() {
    local p missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
        say "installing ${missing[*]}"
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null ||
            die "could not install ${missing[*]}; install them with apt-get and run again"
    fi
    local c
    for c in dockerd docker docker-registry ip iptables nsenter unshare; do
        command -v "$c" >/dev/null || die "$c not found although its package is installed; reinstall it"
    done
}

# --- teardown (also the sweep before an up) ------------------------------------------------------

# The nodes that exist in any form: namespaces, data directories.
existing_nodes() {
    {
        ip netns list 2>/dev/null | awk -v p="^$PREFIX-node[0-9]+\$" '$1 ~ p { sub("^'"$PREFIX"'-", "", $1); print $1 }'
        local d
        for d in "$LAB_DATA"/node*/; do
            [ -d "$d" ] && basename "$d"
        done
    } | sort -u
}

# Every process of NODE: those in its network namespace (holder, dockerd, containerd, shims,
# host-network containers), their descendants (containers in namespaces of their own), and
# whatever is in its containers' cgroups (orphans of a crashed run).
node_pids() {
    local node=$1 ns
    ns=$(netns_of "$node")
    {
        if [ -e "/run/netns/$ns" ]; then
            local roots
            roots=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
            if [ -n "$roots" ]; then
                # shellcheck disable=SC2086 # a list of numbers
                ps -eo pid=,ppid= | awk -v roots="$roots" '
                    BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1 }
                    { parent[$1] = $2 }
                    END {
                        do { grew = 0
                             for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; grew = 1 }
                        } while (grew)
                        for (p in keep) print p
                    }'
            fi
        fi
        find /sys/fs/cgroup/ -path "*/$PREFIX/$node/*" -name cgroup.procs -exec cat {} + 2>/dev/null || true
    } | sort -un
}

stop_node() {
    local node=$1 ns pids pid cgroups="" cg dir
    ns=$(netns_of "$node")
    # Every process of the node at once, with SIGKILL: the lab's state is thrown away, and a gentle
    # dockerd stop would wait 10 s for each container that ignores SIGTERM. The node's mounts go
    # with its mount namespace when its last process is gone.
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        pids=$(node_pids "$node" | tr '\n' ' ')
        [ -n "${pids// /}" ] || break
        # The cgroups named by a container's or plugin's ID these processes are in: plugins get
        # /<plugin ID>, outside the containers' cgroup parent. Removed once the processes are gone.
        # shellcheck disable=SC2086 # a list of numbers
        cgroups+=$'\n'$(for pid in $pids; do cut -d: -f3 "/proc/$pid/cgroup" 2>/dev/null || true; done |
            grep -E "^(/$PREFIX/$node)?/[0-9a-f]{64}\$" || true)
        # shellcheck disable=SC2086 # a list of numbers
        kill -KILL $pids 2>/dev/null || true
        sleep 0.2
    done
    [ -z "$(node_pids "$node")" ] || say "$node: processes still alive after SIGKILL: $(node_pids "$node" | tr '\n' ' ')"
    if [ -e "/run/netns/$ns" ]; then
        ip netns delete "$ns" 2>/dev/null || die "cannot delete network namespace $ns; see: ip netns pids $ns"
    fi
    ip link delete "ikl-$node" 2>/dev/null || true
    while read -r cg; do
        [ -n "$cg" ] || continue
        for dir in /sys/fs/cgroup/*"$cg"; do
            for _ in 1 2 3 4 5 6 7 8 9 10; do
                [ -d "$dir" ] || break
                rmdir "$dir" 2>/dev/null || sleep 0.1
            done
            [ ! -d "$dir" ] || say "$node: cannot remove the cgroup $dir (rmdir it when its processes are gone)"
        done
    done < <(sort -u <<<"$cgroups")
    # The containers' cgroups (dockerd removes them when it can), deepest first.
    find /sys/fs/cgroup/ -depth -type d \( -path "*/$PREFIX/$node" -o -path "*/$PREFIX/$node/*" \) \
        -exec rmdir {} + 2>/dev/null || true
}

stop_registry() {
    local pid
    # Only a docker-registry serving our own config file.
    for pid in $(pgrep -x docker-registry || true); do
        if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$LAB_DATA/registry/config.yml"; then
            # (It lingers for seconds after a SIGTERM; its data is thrown away.)
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
}

remove_forward_rule() {
    local rule
    while rule=$(iptables -S FORWARD | grep -F -- "--comment $PREFIX" | head -n 1) && [ -n "$rule" ]; do
        # shellcheck disable=SC2086 # the rule's own words, as iptables -S prints them
        eval iptables -D ${rule#-A }
    done
}

down() {
    local node started stops=() pid
    started=$(now)
    for node in $(existing_nodes); do
        stop_node "$node" &
        stops+=($!)
    done
    for pid in "${stops[@]}"; do
        wait "$pid" || true
    done
    stop_registry
    remove_forward_rule
    ip link delete "$BRIDGE" 2>/dev/null || true
    find /sys/fs/cgroup/ -maxdepth 2 -depth -type d -name "$PREFIX" -exec rmdir {} + 2>/dev/null || true
    # /run/netns is a mount point `ip netns add` makes; unmounted only when the lab made it and
    # nobody else has a namespace there.
    if [ -e "$LAB_DATA/made-run-netns" ] && [ -z "$(ip netns list 2>/dev/null)" ]; then
        umount /run/netns 2>/dev/null || true
        rmdir /run/netns 2>/dev/null || true
    fi
    if [ -d "$LAB_DATA" ]; then
        if findmnt -rno TARGET | grep -qF "$LAB_DATA/"; then
            die "something is still mounted under $LAB_DATA (findmnt | grep $LAB_DATA); unmount it and run down again"
        fi
        rm -rf --one-file-system "$LAB_DATA"
    fi
    rm -rf "$LAB_RUN"
    say "down in $(since "$started") s"
}

# --- bring-up ------------------------------------------------------------------------------------

# Runs in the node's new namespaces (network entered, mount and UTS unshared, propagation private),
# then becomes the holder: a private /run (the lab's shared directory for this node bound back in
# it), a sysfs showing this namespace's network devices (cgroups moved back under it), and a
# /etc/docker of its own.
# shellcheck disable=SC2016 # expanded by the holder's shell
HOLDER_SCRIPT='
set -eu
node=$1 data=$2 shared=$3
hostname "$node"
aside=$data/aside
mkdir -p "$aside/cgroup" "$aside/shared"
mount --rbind /sys/fs/cgroup "$aside/cgroup"
mount --bind "$shared" "$aside/shared"
mount -t tmpfs -o mode=0755 lab-run /run
mkdir -p "$shared"
mount --move "$aside/shared" "$shared"
mount -t sysfs lab-sys /sys
mount --move "$aside/cgroup" /sys/fs/cgroup
mount --bind "$data/etc-docker" /etc/docker
echo $$ >"$data/holder.pid"
exec sleep infinity
'

start_node() {
    local node=$1 ns data shared ip holder
    ns=$(netns_of "$node")
    data=$LAB_DATA/$node
    shared=$LAB_RUN/$node
    ip=$(ip_of "$node")
    mkdir -p "$data/etc-docker" "$data/docker" "$shared"
    cat >"$data/daemon.json" <<EOF
{
  "data-root": "$data/docker",
  "hosts": ["unix:///var/run/docker.sock", "unix://$shared/docker.sock"],
  "experimental": true,
  "insecure-registries": ["$REGISTRY"],
  "cgroup-parent": "/$PREFIX/$node"
}
EOF
    ip netns add "$ns"
    ip link add "ikl-$node" type veth peer name eth0 netns "$ns"
    ip link set "ikl-$node" master "$BRIDGE" up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$ip/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add default via "$SUBNET.1"

    rm -f "$data/holder.pid"
    setsid nsenter --net="/run/netns/$ns" unshare --mount --uts --propagation private \
        sh -c "$HOLDER_SCRIPT" holder "$node" "$data" "$shared" \
        </dev/null >"$data/holder.log" 2>&1 9>&- &
    for _ in $(seq 1 100); do
        [ -s "$data/holder.pid" ] && break
        sleep 0.05
    done
    [ -s "$data/holder.pid" ] || die "$node: its namespaces did not come up; see $data/holder.log: $(cat "$data/holder.log")"
    holder=$(cat "$data/holder.pid")

    setsid nsenter -t "$holder" --net --mount --uts dockerd --config-file "$data/daemon.json" \
        </dev/null >"$data/dockerd.log" 2>&1 9>&- &
    echo $! >"$data/dockerd.pid"
}

wait_engine() {
    local node=$1 t
    t=$(now)
    until dk "$node" version >/dev/null 2>&1; do
        if ! kill -0 "$(cat "$LAB_DATA/$node/dockerd.pid")" 2>/dev/null; then
            die "$node: dockerd exited; the end of its log ($LAB_DATA/$node/dockerd.log):
$(tail -n 20 "$LAB_DATA/$node/dockerd.log")"
        fi
        if awk -v a="$t" -v b="$(now)" -v d="$ENGINE_DEADLINE" 'BEGIN { exit !(b - a > d) }'; then
            die "$node: no answer from its engine within $ENGINE_DEADLINE s; the end of its log ($LAB_DATA/$node/dockerd.log):
$(tail -n 20 "$LAB_DATA/$node/dockerd.log")"
        fi
        sleep 0.1
    done
}

start_registry() {
    local dir=$LAB_DATA/registry t
    mkdir -p "$dir/data"
    cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: $REGISTRY
EOF
    setsid docker-registry serve "$dir/config.yml" </dev/null >"$dir/registry.log" 2>&1 9>&- &
    t=$(now)
    until timeout 1 bash -c "</dev/tcp/${REGISTRY%:*}/${REGISTRY#*:}" 2>/dev/null; do
        if awk -v a="$t" -v b="$(now)" 'BEGIN { exit !(b - a > 20) }'; then
            die "the registry did not listen on $REGISTRY within 20 s; its log: $(tail -n 20 "$dir/registry.log")"
        fi
        sleep 0.05
    done
}

# "MANAGERS_READY_REACHABLE LEADERS WORKERS_READY" as node1 sees the swarm.
swarm_counts() {
    dk node1 node ls --format '{{.Status}} {{.ManagerStatus}}' 2>/dev/null |
        awk '$1 == "Ready" && ($2 == "Leader" || $2 == "Reachable") { m++ }
             $1 == "Ready" && $2 == "Leader" { l++ }
             $1 == "Ready" && $2 == "" { w++ }
             END { printf "%d %d %d\n", m, l, w }'
}

swarm_ready() { [ "$(swarm_counts)" = "$MANAGERS 1 $((NODES - MANAGERS))" ]; }

form_swarm() {
    local first_ip mtoken wtoken node k t
    first_ip=$(ip_of node1)
    dk node1 swarm init --advertise-addr "$first_ip" --listen-addr "$first_ip:2377" >/dev/null
    mtoken=$(dk node1 swarm join-token -q manager)
    wtoken=$(dk node1 swarm join-token -q worker)
    # Managers one at a time (each join changes the raft membership), then the workers together.
    for ((k = 2; k <= MANAGERS; k++)); do
        node=$(node_name "$k")
        dk "$node" swarm join --token "$mtoken" --advertise-addr "$(ip_of "$node")" "$first_ip:2377" >/dev/null
    done
    # (Waiting on these alone: the holders and engines are children of this shell too.)
    local joins=()
    for ((k = MANAGERS + 1; k <= NODES; k++)); do
        node=$(node_name "$k")
        dk "$node" swarm join --token "$wtoken" --advertise-addr "$(ip_of "$node")" "$first_ip:2377" >/dev/null &
        joins+=($!)
    done
    for k in "${joins[@]}"; do
        wait "$k" || die "a worker could not join the swarm (see the error above)"
    done
    t=$(now)
    until swarm_ready; do
        if awk -v a="$t" -v b="$(now)" -v d="$SWARM_DEADLINE" 'BEGIN { exit !(b - a > d) }'; then
            die "the swarm did not settle within $SWARM_DEADLINE s (want $MANAGERS Ready managers, one Leader, $((NODES - MANAGERS)) Ready workers); node1 says:
$(dk node1 node ls 2>&1)"
        fi
        sleep 0.1
    done
}

write_state() {
    local node k nodes="" managers="" workers="" json_nodes=""
    for ((k = 1; k <= NODES; k++)); do
        node=$(node_name "$k")
        nodes+="${nodes:+ }$node"
        if [ "$(role_of "$node")" = manager ]; then managers+="${managers:+ }$node"; else workers+="${workers:+ }$node"; fi
        json_nodes+="${json_nodes:+,
}    {\"Name\": \"$node\", \"Role\": \"$(role_of "$node")\", \"IP\": \"$(ip_of "$node")\", \"DockerHost\": \"$(host_of "$node")\", \"Netns\": \"$(netns_of "$node")\", \"HolderPid\": $(cat "$LAB_DATA/$node/holder.pid")}"
    done
    {
        echo "# The infrakit swarm lab (scripts/swarm-lab.sh): source it. NODE is node1..node$NODES."
        echo "LAB_NODES=\"$nodes\""
        echo "LAB_MANAGERS=\"$managers\""
        echo "LAB_WORKERS=\"$workers\""
        echo "LAB_REGISTRY=$REGISTRY"
        echo "LAB_BRIDGE=$BRIDGE"
        for ((k = 1; k <= NODES; k++)); do
            node=$(node_name "$k")
            echo "LAB_${node^^}_ROLE=$(role_of "$node")"
            echo "LAB_${node^^}_IP=$(ip_of "$node")"
            echo "LAB_${node^^}_DOCKER_HOST=$(host_of "$node")"
            echo "LAB_${node^^}_NETNS=$(netns_of "$node")"
            echo "LAB_${node^^}_HOLDER_PID=$(cat "$LAB_DATA/$node/holder.pid")"
        done
    } >"$LAB_RUN/lab.env.tmp"
    printf '{\n  "Registry": "%s",\n  "Bridge": "%s",\n  "Nodes": [\n%s\n  ]\n}\n' \
        "$REGISTRY" "$BRIDGE" "$json_nodes" >"$LAB_RUN/lab.json.tmp"
    mv "$LAB_RUN/lab.env.tmp" "$LAB_RUN/lab.env"
    mv "$LAB_RUN/lab.json.tmp" "$LAB_RUN/lab.json"
}

summary() {
    local node k leader
    leader=$(dk node1 node ls --format '{{.Hostname}} {{.ManagerStatus}}' 2>/dev/null | awk '$2 == "Leader" { print $1 }')
    echo "swarm lab: $MANAGERS manager(s), $((NODES - MANAGERS)) worker(s), experimental engines"
    local lead
    for ((k = 1; k <= NODES; k++)); do
        node=$(node_name "$k")
        lead=""
        [ "$node" != "$leader" ] || lead=leader
        printf '  %-7s %-8s %-7s %-12s DOCKER_HOST=%s\n' "$node" "$(role_of "$node")" "$lead" \
            "$(ip_of "$node")" "$(host_of "$node")"
    done
    echo "  registry $REGISTRY (plain HTTP, anonymous; every node lists it in insecure-registries)"
    echo "  inside a node (its own /var/run/docker.sock, /run/docker/plugins):"
    echo "    scripts/swarm-lab.sh exec node2 -- docker plugin ls"
    echo "  for tools: $LAB_RUN/lab.env (source it), $LAB_RUN/lab.json"
    echo "  remove it all: make swarm-lab-down"
}

# A lab of this shape whose holders live, whose engines answer and whose swarm is complete.
healthy() {
    [ -f "$LAB_RUN/lab.env" ] || return 1
    local k node want_nodes=""
    for ((k = 1; k <= NODES; k++)); do want_nodes+="${want_nodes:+ }$(node_name "$k")"; done
    grep -qxF "LAB_NODES=\"$want_nodes\"" "$LAB_RUN/lab.env" || return 1
    grep -qxF "LAB_REGISTRY=$REGISTRY" "$LAB_RUN/lab.env" || return 1
    for ((k = 1; k <= NODES; k++)); do
        node=$(node_name "$k")
        [ "$(ip netns identify "$(cat "$LAB_DATA/$node/holder.pid" 2>/dev/null || echo 0)" 2>/dev/null)" = "$(netns_of "$node")" ] || return 1
        dk "$node" version >/dev/null 2>&1 || return 1
    done
    swarm_ready || return 1
    timeout 1 bash -c "</dev/tcp/${REGISTRY%:*}/${REGISTRY#*:}" 2>/dev/null
}

up() {
    local started t k node
    started=$(now)
    if healthy; then
        summary
        say "already up and healthy (checked in $(since "$started") s)"
        return
    fi
    if [ -n "$(existing_nodes)" ] || ip link show "$BRIDGE" >/dev/null 2>&1 || [ -d "$LAB_DATA" ]; then
        say "sweeping a previous lab"
        down
    fi
    local used
    used=$(ip -o -4 addr show | awk -v n="$SUBNET." '
        { split($4, a, "/"); if (index(a[1], n) == 1) print $2 " " $4 }')
    [ -z "$used" ] || die "$SUBNET.0/24 is already in use on this machine ($used): pick another, e.g. make swarm-lab SUBNET=10.98.0"
    mkdir -p "$LAB_DATA" "$LAB_RUN"
    [ -d /run/netns ] || touch "$LAB_DATA/made-run-netns"

    t=$(now)
    ip link add "$BRIDGE" type bridge
    ip addr add "$SUBNET.1/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    # The host drops bridged traffic (FORWARD policy DROP with bridge netfilter): let the lab's
    # nodes talk to each other. Tagged so that down removes exactly this rule.
    iptables -I FORWARD -i "$BRIDGE" -o "$BRIDGE" -m comment --comment "$PREFIX" -j ACCEPT
    start_registry
    for ((k = 1; k <= NODES; k++)); do
        start_node "$(node_name "$k")"
    done
    say "network, namespaces, registry in $(since "$t") s"

    t=$(now)
    for ((k = 1; k <= NODES; k++)); do
        wait_engine "$(node_name "$k")"
    done
    say "$NODES engines answering in $(since "$t") s"

    t=$(now)
    form_swarm
    say "swarm formed in $(since "$t") s"

    write_state
    summary
    say "up in $(since "$started") s"
}

status() {
    [ -f "$LAB_RUN/lab.env" ] || die "no lab (no $LAB_RUN/lab.env): make swarm-lab brings one up"
    # shellcheck disable=SC1091 # written by up
    . "$LAB_RUN/lab.env"
    NODES=$(wc -w <<<"$LAB_NODES")
    MANAGERS=$(wc -w <<<"$LAB_MANAGERS")
    summary
    local node
    for node in $LAB_NODES; do
        if dk "$node" version >/dev/null 2>&1; then say "$node answers"; else say "$node does NOT answer"; fi
    done
}

exec_in() {
    local node=${1:-} holder
    [ -n "$node" ] || die "usage: scripts/swarm-lab.sh exec NODE -- CMD..."
    shift
    [ "${1:-}" = -- ] && shift
    (($#)) || die "usage: scripts/swarm-lab.sh exec NODE -- CMD... (no command given)"
    holder=$(cat "$LAB_DATA/$node/holder.pid" 2>/dev/null) ||
        die "no node $node in the lab ($(existing_nodes | tr '\n' ' ')); make swarm-lab brings it up"
    [ "$(ip netns identify "$holder" 2>/dev/null)" = "$(netns_of "$node")" ] ||
        die "$node's holder process ($holder) is gone: the lab is broken; make swarm-lab rebuilds it"
    # The node's engine, not whatever DOCKER_HOST the caller had.
    exec nsenter -t "$holder" --net --mount --uts env -u DOCKER_HOST "$@"
}

main() {
    local cmd=${1:-}
    [ -n "$cmd" ] || die "usage: scripts/swarm-lab.sh up|down|status|exec NODE -- CMD..."
    shift
    case "$cmd" in
    up | down)
        need_root
        check_shape
        [ "$cmd" = down ] || ensure_packages
        exec 9>"$LOCK"
        flock -w 300 9 || die "another swarm-lab command holds $LOCK for more than 300 s"
        "$cmd"
        ;;
    status) status ;;
    exec)
        need_root
        exec_in "$@"
        ;;
    *) die "unknown command '$cmd'; usage: scripts/swarm-lab.sh up|down|status|exec NODE -- CMD..." ;;
    esac
}

main "$@"
