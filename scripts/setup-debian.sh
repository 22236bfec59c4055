#!/usr/bin/env bash
# Installs what building and testing need on a fresh Debian 12 machine; does nothing when it is there.
set -euo pipefail

need=()
command -v cc >/dev/null || need+=(gcc)
command -v make >/dev/null || need+=(make)
# The EC2 emulator's virtual environment (scripts/setup-moto.sh, below).
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if ((${#need[@]})); then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: missing ${need[*]}; run as root or install them" >&2
        exit 1
    fi
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
fi
if ! command -v cargo >/dev/null; then
    echo "setup: cargo not found; install Rust (rustup) first" >&2
    exit 1
fi

# CI runs the test where a real Prometheus scrapes the group plugin (tests/events_metrics.rs):
# Debian's prometheus, installed without starting its service (the test runs its own on loopback).
if [ "${CI:-}" = true ] && ! command -v prometheus >/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: CI needs Debian's prometheus; run as root or install it" >&2
        exit 1
    fi
    made_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus
    if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
    # A service started anyway (a system without policy-rc.d support) would listen on :9090.
    if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
        systemctl stop prometheus || true
        systemctl disable prometheus || true
    fi
fi

# The EC2 emulator the instance-aws tests run against (moto's server, in a venv of its own).
bash "$(dirname "$0")/setup-moto.sh"
# QEMU and what `make vm-image` needs, for instance-qemu and its tests (the guest image too, in CI).
bash "$(dirname "$0")/setup-vm.sh"
