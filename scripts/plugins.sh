#!/usr/bin/env bash
# Builds and manages InfraKit's Docker managed plugins (what `make plugins/enable/disable/...` run).
#
#   scripts/plugins.sh create|enable|disable|clean|push|ls|list [NAME...]   (list: "name binary")
#   scripts/plugins.sh upgrade PLUGIN REMOTE-REFERENCE
#
# Plugins: every plugins/<name>/config.json (the top-level config.json, the bundle's entry manifest,
# is a link to plugins/group/config.json); src/registry.rs lists the same plugins, and its tests run
# `scripts/plugins.sh list` to check that this script builds what the registry says.
# Each is created as $REPO/<name>:$VERSION from a context $BUILD_DIR/<name>/{config.json,rootfs/},
# the rootfs holding the static binary its manifest's entrypoint names (/infrakit: $BIN; any other,
# e.g. /infrakit-instance-aws: the binary of that name beside $BIN) and the empty directories its
# mounts need. A plugin that needs more in its rootfs (QEMU and its libraries) has an executable
# plugins/<name>/rootfs.sh, run with the rootfs directory as its argument.
#
# Environment: REPO (default infrakit), VERSION (default: Cargo.toml's), BIN (the static binary),
# BUILD_DIR (default target/plugins), DOCKER (default docker), NAME_PREFIX (default none: prefixes
# each plugin's name, e.g. `e2e-` gives $REPO/e2e-group:$VERSION, found as `e2e-group`; the tests use
# it so they never touch or collide with the plugins a person has enabled on the same engine).
set -euo pipefail
cd "$(dirname "$0")/.."

REPO=${REPO:-infrakit}
VERSION=${VERSION:-$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)}
BIN=${BIN:-target/static/x86_64-unknown-linux-gnu/release/infrakit}
BUILD_DIR=${BUILD_DIR:-target/plugins}
DOCKER=${DOCKER:-docker}

die() {
    echo "plugins: $*" >&2
    exit 1
}

# Every plugin (plugins/<name>/config.json), in enable order: what others depend on first, the
# group controller (which calls the others) last.
every_plugin() {
    local d name
    for d in plugins/*/; do
        name=$(basename "$d")
        [ -f "$d/config.json" ] && [ "$name" != group ] && echo "$name"
    done
    [ -f plugins/group/config.json ] && echo group
}

# Every plugin that can be built here: one with a binary of its own that was not built (make
# static-aws, make static-qemu) is left out, saying so; named explicitly, its absence is an error.
all_plugins() {
    local name binary
    while read -r name; do
        binary=$(binary_of "$name")
        if [ "$binary" != infrakit ] && [ ! -x "$(binary_path "$binary")" ]; then
            echo "plugins: leaving out $name: no $(binary_path "$binary") (make static-${name#instance-} builds it)" >&2
            continue
        fi
        echo "$name"
    done < <(every_plugin)
}

config_of() { echo "plugins/$1/config.json"; }

# The binary a plugin's rootfs holds: the file its manifest's entrypoint starts (infrakit, or a
# binary of the plugin's own).
binary_of() {
    local first
    first=$(tr -d '\n' <"$(config_of "$1")" | grep -o '"entrypoint" *: *\[ *"[^"]*"' | sed 's/.*"\/\([^"]*\)"$/\1/')
    [ -n "$first" ] || die "$(config_of "$1"): no entrypoint"
    echo "$first"
}

# The file to copy for binary $1: $BIN for infrakit, else the file of that name beside $BIN.
binary_path() {
    if [ "$1" = infrakit ]; then echo "$BIN"; else echo "$(dirname "$BIN")/$1"; fi
}

NAME_PREFIX=${NAME_PREFIX:-}
ref_of() { echo "$REPO/$NAME_PREFIX$1:$VERSION"; }

# "ID ENABLED" of an installed plugin, nothing when it is not installed.
state_of() { "$DOCKER" plugin inspect -f '{{.Id}} {{.Enabled}}' "$1" 2>/dev/null || true; }

# Assembles the plugin's context: config.json and a rootfs holding the binary and the (empty)
# mount points. runc creates missing mount points itself, but only in a writable rootfs; creating
# them here keeps the plugin working whatever the engine does with the rootfs.
assemble() {
    local name=$1 config ctx dest binary src
    config=$(config_of "$name")
    [ -f "$config" ] || die "no $config"
    binary=$(binary_of "$name")
    src=$(binary_path "$binary")
    [ -x "$src" ] || die "$name: no binary at $src (make static builds them)"
    ctx="$BUILD_DIR/$name"
    rm -rf "$ctx"
    mkdir -p "$ctx/rootfs"/{run/docker/plugins,tmp,etc,proc,sys,dev}
    cp "$config" "$ctx/config.json"
    install -m 0755 "$src" "$ctx/rootfs/$binary"
    # Host files a plugin's rootfs needs, one path per line in plugins/<name>/rootfs-files (the
    # CA certificates TLS to a cloud needs).
    if [ -f "plugins/$name/rootfs-files" ]; then
        local f
        while read -r f; do
            [ -n "$f" ] || continue
            [ -f "$f" ] || die "plugin $name needs $f from this host (Debian: ca-certificates)"
            install -D -m 0644 "$f" "$ctx/rootfs$f"
        done <"plugins/$name/rootfs-files"
    fi
    # Which plugin and version this is, readable in the rootfs. It also keeps two plugins' layers
    # apart: the engine's content store refuses a second blob with an existing digest ("content
    # sha256:...: already exists"), and two plugins with the same mounts assembled within the same
    # second (tar mtimes are whole seconds) would otherwise be byte-identical layers.
    echo "$(ref_of "$name")" >"$ctx/rootfs/VERSION"
    # Mount destinations from config.json: a directory each, or the parent of a socket file.
    while read -r dest; do
        case "$dest" in
        *.sock) mkdir -p "$ctx/rootfs$(dirname "$dest")" ;;
        /*) mkdir -p "$ctx/rootfs$dest" ;;
        esac
    done < <(grep -o '"destination" *: *"[^"]*"' "$config" | sed 's/.*: *"\(.*\)"/\1/')
    if [ -x "plugins/$name/rootfs.sh" ]; then "plugins/$name/rootfs.sh" "$ctx/rootfs" || die "$name: plugins/$name/rootfs.sh failed"; fi
}

create() {
    local name=$1 ref hash state id enabled stamp out
    ref=$(ref_of "$name")
    assemble "$name"
    hash=$(cd "$BUILD_DIR/$name" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
    stamp="$BUILD_DIR/$name.created"
    state=$(state_of "$ref")
    if [ -n "$state" ]; then
        read -r id enabled <<<"$state"
        # Same content as the plugin we created last time: keep it (and its settings) as it is.
        if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash $id" ]; then
            echo "$ref: up to date ($id)"
            return
        fi
        echo "$ref: changed; replacing it (its settings go back to config.json's)"
        if [ "$enabled" = true ]; then "$DOCKER" plugin disable "$ref" >/dev/null; fi
        "$DOCKER" plugin rm -f "$ref" >/dev/null
    fi
    if ! out=$("$DOCKER" plugin create "$ref" "$BUILD_DIR/$name" 2>&1 >/dev/null); then
        # The same plugin re-created within a second of the one just removed is the same layer
        # again, which the content store may still hold; a second later the mtimes differ.
        case "$out" in *"already exists"*) ;; *) die "$ref: $out" ;; esac
        sleep 1
        assemble "$name"
        "$DOCKER" plugin create "$ref" "$BUILD_DIR/$name" >/dev/null
    fi
    id=$("$DOCKER" plugin inspect -f '{{.Id}}' "$ref")
    echo "$hash $id" >"$stamp"
    echo "$ref: created ($(du -sh "$BUILD_DIR/$name/rootfs" | cut -f1) rootfs)"
    if [ "${enabled:-false}" = true ]; then enable "$name"; fi
}

enable() {
    local ref src state
    ref=$(ref_of "$1")
    state=$(state_of "$ref")
    [ -n "$state" ] || die "$ref is not installed; run make plugins first"
    if [ "${state#* }" = true ]; then
        echo "$ref: enabled"
        return
    fi
    # The engine refuses to enable a plugin whose bind-mount source is missing; the settable ones
    # (data directories such as the group store) are ours to create.
    while read -r src; do
        [ -n "$src" ] && [ ! -e "$src" ] && mkdir -p "$src"
    done < <("$DOCKER" plugin inspect -f '{{range .Settings.Mounts}}{{if .Settable}}{{.Source}}{{"\n"}}{{end}}{{end}}' "$ref")
    "$DOCKER" plugin enable "$ref" >/dev/null
    echo "$ref: enabled"
}

disable() {
    local ref state
    ref=$(ref_of "$1")
    state=$(state_of "$ref")
    if [ -z "$state" ] || [ "${state#* }" != true ]; then return; fi
    "$DOCKER" plugin disable "$ref" >/dev/null
    echo "$ref: disabled"
}

clean() {
    local ref
    ref=$(ref_of "$1")
    disable "$1"
    if [ -n "$(state_of "$ref")" ]; then
        "$DOCKER" plugin rm -f "$ref" >/dev/null
        echo "$ref: removed"
    fi
    rm -rf "${BUILD_DIR:?}/$1" "$BUILD_DIR/$1.created"
}

push() {
    local ref
    ref=$(ref_of "$1")
    [ -n "$(state_of "$ref")" ] || die "$ref is not installed; run make plugins REPO=$REPO first"
    "$DOCKER" plugin push "$ref"
}

# Upgrades an installed plugin (any name or alias) to a registry reference, keeping its ID and
# settings: disable, `docker plugin upgrade`, re-apply the mount sources, enable (if it was).
# Why re-apply: Docker 20.10 keeps the settings in `plugin inspect` but mounts the new version's
# default sources until the next `plugin set` (found by tests/engine.rs: the group store came up
# empty after an upgrade).
upgrade() {
    local plugin=$1 remote=$2 state sets=()
    state=$(state_of "$plugin")
    [ -n "$state" ] || die "$plugin is not installed"
    mapfile -t sets < <("$DOCKER" plugin inspect -f '{{range .Settings.Mounts}}{{if .Settable}}{{.Name}}.source={{.Source}}{{"\n"}}{{end}}{{end}}' "$plugin" | sed '/^$/d')
    if [ "${state#* }" = true ]; then "$DOCKER" plugin disable "$plugin" >/dev/null; fi
    "$DOCKER" plugin upgrade --grant-all-permissions --skip-remote-check "$plugin" "$remote" >/dev/null
    if ((${#sets[@]})); then "$DOCKER" plugin set "$plugin" "${sets[@]}"; fi
    if [ "${state#* }" = true ]; then "$DOCKER" plugin enable "$plugin" >/dev/null; fi
    echo "$plugin: upgraded to $remote ($(state_of "$plugin" | cut -c1-12))"
}

cmd=${1:-}
shift || true
if [ "$cmd" = upgrade ]; then
    (($# == 2)) || die "usage: $0 upgrade PLUGIN REMOTE-REFERENCE"
    upgrade "$1" "$2"
    exit 0
fi
if [ "$cmd" = list ]; then
    while read -r n; do echo "$n $(binary_of "$n")"; done < <(every_plugin)
    exit 0
fi
names=("$@")
if ((${#names[@]} == 0)); then mapfile -t names < <(all_plugins); fi

"$DOCKER" version >/dev/null 2>&1 || die "no Docker engine answers ($DOCKER version failed); scripts/docker-engine.sh starts one"
case "$cmd" in
create)
    [ -x "$BIN" ] || die "no static binary at $BIN; run make static"
    for n in "${names[@]}"; do create "$n"; done
    ;;
enable) for n in "${names[@]}"; do enable "$n"; done ;;
disable)
    # The group controller first: it must not see its instance plugin vanish mid-pass.
    for ((i = ${#names[@]} - 1; i >= 0; i--)); do disable "${names[$i]}"; done
    ;;
clean) for ((i = ${#names[@]} - 1; i >= 0; i--)); do clean "${names[$i]}"; done ;;
push) for n in "${names[@]}"; do push "$n"; done ;;
ls) "$DOCKER" plugin ls ;;
*) die "usage: $0 create|enable|disable|clean|push|ls|list [NAME...] | upgrade PLUGIN REMOTE" ;;
esac
