#!/usr/bin/env bash
# Installs the EC2 emulator the instance-aws tests run against: moto's server mode from PyPI, in a
# virtual environment of its own (nothing touches the system's Python). Does nothing when the pinned
# version is already there. The path is INFRAKIT_MOTO_VENV (default /opt/infrakit/moto-venv); the
# tests find its `moto_server` through INFRAKIT_MOTO (default <venv>/bin/moto_server).
set -euo pipefail

MOTO_VERSION=5.2.6
venv=${INFRAKIT_MOTO_VENV:-/opt/infrakit/moto-venv}

if [ -x "$venv/bin/moto_server" ] &&
    "$venv/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
    exit 0
fi

if ! command -v python3 >/dev/null; then
    echo "setup-moto: python3 not found; install Debian's python3 and python3-venv" >&2
    exit 1
fi
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    echo "setup-moto: python3 cannot make a virtual environment; install Debian's python3-venv" >&2
    exit 1
fi

parent=$(dirname "$venv")
if ! mkdir -p "$parent" 2>/dev/null || [ ! -w "$parent" ]; then
    echo "setup-moto: cannot write $parent: run as root, or set INFRAKIT_MOTO_VENV to a writable path (and INFRAKIT_MOTO to its bin/moto_server for the tests)" >&2
    # Outside CI the EC2 tests then skip (loudly); in CI they need it.
    [ "${CI:-}" = true ] && exit 1
    exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
"$venv/bin/moto_server" --help >/dev/null
echo "setup-moto: moto $MOTO_VERSION in $venv"
