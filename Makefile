# InfraKit-rs. `make test` runs every test (what CI runs); `make bench` prints the figures.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: vm-image vm-image-zk bench-vm plugin-qemu test-vm bench-scale bench-ec2 static-aws test-swarm test-quick all build test lint fmt bench setup clean up static plugins enable disable clean-plugins push upgrade bench-plugins engine zk-image node-image bench-docker swarm-lab swarm-lab-down

## Managed plugins: $(REPO)/<name>:$(VERSION) (e.g. make plugins REPO=127.0.0.1:5000/infrakit).
REPO ?= infrakit
VERSION ?= $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' Cargo.toml | head -n 1)
STATIC_TARGET := x86_64-unknown-linux-gnu
# A target dir of its own: other RUSTFLAGS would otherwise invalidate the normal build's cache.
STATIC_DIR := target/static
STATIC_BIN := $(STATIC_DIR)/$(STATIC_TARGET)/release/infrakit
PLUGINS_SH = REPO='$(REPO)' VERSION='$(VERSION)' BIN='$(STATIC_BIN)' bash scripts/plugins.sh

all: build

## Install what a fresh Debian machine lacks (idempotent).
setup:
	@bash scripts/setup-debian.sh

build:
	$(CARGO) build --release --locked --bin infrakit

## Every test: formatting, lints, unit, simulation and end-to-end tests with real plugin processes,
## and (tests/engine.rs, tests/docker.rs, tests/zookeeper.rs) the managed plugins on a real Docker
## Engine. With CI=true an engine is installed/started first, the ZooKeeper image is built (unless it
## exists) and the engine tests must run; elsewhere they run when an engine (and the image) is there.
## As root with an engine, tests/swarm_*.rs also bring up the swarm lab and a bootstrapped swarm
## (said first, before anything is built); INFRAKIT_SKIP_SWARM=1 (make test-quick) skips them, CI
## refuses to. Every test part that did not run is listed at the end; with CI=true any is a failure.
SKIP_LOG := $(CURDIR)/target/test-skips.log
test: setup
	@if [ "$${CI:-}" = true ]; then bash scripts/docker-engine.sh; fi
	@bash scripts/test-notice.sh
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	@if [ "$${CI:-}" = true ] || timeout 10 docker version >/dev/null 2>&1; then $(MAKE) --no-print-directory static; \
	 else echo "make test: no Docker engine answers: not building the static binary; the engine tests will skip"; fi
	@if [ "$${CI:-}" = true ] && timeout 10 docker version >/dev/null 2>&1; then $(MAKE) --no-print-directory zk-image node-image; \
	 elif ! timeout 10 docker image inspect '$(ZK_IMAGE):$(ZK_TAG)' >/dev/null 2>&1; then \
	 echo "make test: no $(ZK_IMAGE):$(ZK_TAG) (make zk-image builds it, as root; CI does): tests/zookeeper.rs will skip"; fi
	@mkdir -p target && rm -f '$(SKIP_LOG)'
	@status=0; INFRAKIT_SKIP_LOG='$(SKIP_LOG)' $(CARGO) test --workspace --locked --no-fail-fast || status=$$?; \
	 bash scripts/test-skips.sh '$(SKIP_LOG)' || status=1; exit $$status

## `make test` without the swarm lab and bootstrapped swarm tests (reported as skipped at the end).
test-quick:
	@INFRAKIT_SKIP_SWARM=1 $(MAKE) --no-print-directory test

## The lab swarm tests alone (part of `make test` too; 2-4 minutes, root): the bundle deployed,
## upgraded and removed as plugin services; a leader's engine killed mid-update, no quorum, a
## partitioned leader.
test-swarm:
	$(CARGO) test --locked --test swarm_deploy --test swarm_failover -- --nocapture --test-threads 1

## Make sure a Docker Engine answers (installs Debian's docker.io and starts dockerd if needed).
engine:
	bash scripts/docker-engine.sh

## The static binary every plugin's rootfs holds.
static:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release --locked \
	  --target $(STATIC_TARGET) --target-dir $(STATIC_DIR) --bin infrakit

## The EC2 plugin's own static binary (the AWS SDK stays out of the bundle's `infrakit`); its
## rootfs also gets this host's CA certificates (scripts/plugins.sh, plugins/instance-aws/).
static-aws:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release --locked \
	  --target $(STATIC_TARGET) --target-dir $(STATIC_DIR) -p infrakit-instance-aws

## The EC2 plugin against the emulator: a group of N (default 1,000) through the group controller,
## commit → converged, EC2 requests by operation, destroy → all terminated (scripts/setup-moto.sh).
bench-ec2:
	$(CARGO) build --locked --bin infrakit
	$(CARGO) bench --locked --profile dev -p infrakit-instance-aws --bench ec2

## Create every managed plugin (an unchanged one is kept with its settings, a changed one replaced).
plugins: static
	$(PLUGINS_SH) create

## Enable / disable every plugin (the group controller last / first).
enable:
	$(PLUGINS_SH) enable

disable:
	$(PLUGINS_SH) disable

## Disable and remove every plugin and its build context.
clean-plugins:
	$(PLUGINS_SH) clean

## Push every plugin to the registry named by REPO (make plugins push REPO=127.0.0.1:5000/infrakit).
push:
	$(PLUGINS_SH) push

## Upgrade an installed plugin keeping its ID and settings: make upgrade PLUGIN=infrakit/group:0.1.0 TO=reg/infrakit/group:0.2.0
upgrade:
	bash scripts/plugins.sh upgrade '$(PLUGIN)' '$(TO)'

## Plugin sizes, enable/disable times, idle RSS (creates $(REPO)-bench/* plugins and removes them).
bench-plugins: static
	BIN='$(STATIC_BIN)' bash scripts/bench-plugins.sh

## A ZooKeeper image for examples/zookeeper.json, from Debian's packages (debootstrap + docker
## import: no registry needed; needs root). Does nothing when $(ZK_IMAGE):$(ZK_TAG) exists.
ZK_IMAGE ?= infrakit/zookeeper
ZK_TAG ?= 3.8.0
zk-image:
	IMAGE='$(ZK_IMAGE)' TAG='$(ZK_TAG)' bash scripts/zk-image.sh

## The swarm-node image (Debian + docker.io; debootstrap + docker import, nothing pulled): one
## Docker-in-Docker host per container, made by instance-docker (examples/swarm/). Needs root.
NODE_IMAGE ?= infrakit/swarm-node
NODE_TAG ?= 20.10
node-image:
	IMAGE='$(NODE_IMAGE)' TAG='$(NODE_TAG)' bash scripts/node-image.sh

## The guest instance-qemu boots (Debian from Debian packages only; root; cached by recipe hash
## under /var/lib/infrakit/vm-image, `current` points at it). vm-image-zk adds ZooKeeper.
vm-image:
	bash scripts/vm-image.sh

vm-image-zk:
	VARIANT=zookeeper bash scripts/vm-image.sh

## instance-qemu's figures: provision -> guest ready (and the guest's own boot), N VMs at once, host
## memory per VM, the plugin's CPU and RSS while it watches them (root, real TCG guests).
bench-vm:
	$(CARGO) bench -p infrakit-instance-qemu --bench vm

## The ZooKeeper ensemble on 3 VMs (root, by hand, several minutes under TCG): quorum, the leader's
## QEMU killed and replaced at its address, a rolling memory change, destroy; prints the figures.
test-vm: vm-image-zk
	$(CARGO) build --locked --bins -p infrakit -p infrakit-instance-qemu
	bash scripts/vm-zk-demo.sh

## instance-qemu's managed plugin context (config.json + rootfs with QEMU and the static binary).
plugin-qemu:
	bash scripts/plugin-qemu.sh

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Seconds to run 100 busybox containers: infrakit (commit → converged) beside 100 parallel
## `docker run -d` and `docker service create --replicas 100` (N=..., MAX_PARALLEL=...).
bench-docker: build
	bash scripts/bench-docker.sh

## A swarm on this one machine: NODES engines (MANAGERS of them managers), each in namespaces of its
## own, a bridge (10.99.0.1/24) and a registry on 10.99.0.1:5000 (root). Prints how to reach each node;
## /run/infrakit-lab/lab.env and lab.json say the same for tools. Idempotent; sweeps a crashed lab.
NODES ?= 4
MANAGERS ?= 3
swarm-lab:
	NODES='$(NODES)' MANAGERS='$(MANAGERS)' bash scripts/swarm-lab.sh up

## Removes everything swarm-lab made, and only that (harmless when there is none).
swarm-lab-down:
	bash scripts/swarm-lab.sh down

## Benchmarks (release build): protocol round trips, DescribeInstances over 1,000 files, ...
bench:
	$(CARGO) bench --locked --bench rpc
	$(CARGO) bench --locked --bench group
	$(CARGO) bench --locked -p infrakit-group --bench plan

## One group of 1,000, 10,000 and 100,000 file instances (fresh real plugin processes per size):
## commit → present → converged, destroy → none, peak RSS and CPU of the group and instance-file
## plugins, and the ratio of each figure between sizes. SIZES=1000,10000 skips 100,000; RUNS=2
## repeats each size and prints ranges; POLL sets the controller's poll interval (default 5s); DIR=/dev/shm
## puts the files on tmpfs (takes the disk's file system out of the figures).
bench-scale:
	$(CARGO) bench --locked --bench scale

clean:
	$(CARGO) clean
	rm -rf rootfs plugins/*/rootfs target/plugins

## The quick start: controller + built-in plugins in one process, commits examples/cattle.json.
## A group stored by an earlier run with another spec (changed since, or stopped mid-update) is
## resumed as it is, saying what differs; UP_FLAGS=--force commits FILE over it.
FILE ?= examples/cattle.json
UP_FLAGS ?=
up: setup
	$(CARGO) run --release --locked --bin infrakit -- up $(FILE) $(UP_FLAGS)
