#!/usr/bin/env bash
# The start of `make test`: says, before anything is built, when the run will also bring up the
# swarm lab and a bootstrapped swarm on this machine (as root with a Docker engine), and how to
# skip them. Prints nothing when they will not run (not root, no engine) or were opted out of.
set -uo pipefail
[[ $(id -u) == 0 ]] || exit 0
timeout 10 docker version >/dev/null 2>&1 || exit 0
if [[ ${INFRAKIT_SKIP_SWARM:-} == 1 ]]; then
    if [[ ${CI:-} == true ]]; then
        echo "make test: CI=true runs the swarm tests: unset INFRAKIT_SKIP_SWARM" >&2
        exit 1
    fi
    echo "make test: INFRAKIT_SKIP_SWARM=1: the swarm lab and bootstrap tests will be skipped (listed at the end)"
    exit 0
fi
cat <<'MSG'
make test: running as root with a Docker engine, so the swarm tests (tests/swarm_*.rs, several
minutes) will also, one at a time, on this machine:
  - bring up the swarm lab (scripts/swarm-lab.sh): 4 dockerd, each in network and mount
    namespaces of its own, a bridge infrakit-lab0 (10.99.0.1/24) and a registry on it, state under
    /run/infrakit-lab and /var/lib/infrakit-lab;
  - bootstrap a swarm of containers (image infrakit/swarm-node) on a Docker network
    infrakit-selftest-bootstrap (10.97.0.0/24) with a registry on 10.97.0.1:5000;
and remove all of it afterwards (nothing of yours is touched: every name is the tests' own).
To skip them: make test-quick (or INFRAKIT_SKIP_SWARM=1 make test).
MSG
