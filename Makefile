# InfraKit-rs. `make test` runs every test (what CI runs); `make bench` prints the figures.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: all build test lint fmt bench setup clean up

all: build

## Install what a fresh Debian machine lacks (idempotent).
setup:
	@bash scripts/setup-debian.sh

build:
	$(CARGO) build --release --locked --bin infrakit

## Every test: formatting, lints, unit, simulation and end-to-end tests with real plugin processes.
test: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(CARGO) test --workspace --locked

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Benchmarks (release build): protocol round trips, DescribeInstances over 1,000 files, ...
bench:
	$(CARGO) bench --locked --bench rpc
	$(CARGO) bench --locked --bench group
	$(CARGO) bench --locked -p infrakit-group --bench plan

clean:
	$(CARGO) clean
	rm -rf rootfs plugins/*/rootfs

## The quick start: controller + built-in plugins in one process, commits examples/cattle.json.
FILE ?= examples/cattle.json
up: setup
	$(CARGO) run --release --locked --bin infrakit -- up $(FILE)
