#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian 12 machine (run as root).
#
# Idempotent: apt is skipped when every package is already installed, so reruns
# are fast. Python packages go into the virtual environment .venv of the
# repository (Debian 12's python3 is "externally managed": pip refuses to
# install into it), made from ${PYTHON:-python3}: the project in editable mode
# with its test extras. Run the suite with that interpreter: .venv/bin/python -m pytest.
# Anything else a test needs from PyPI: add it to the test extras in pyproject.toml,
# or install it with "$VENV_PYTHON" -m pip below, so that it lands in the venv too.
set -euo pipefail

APT_PACKAGES=(
    golang-go
    golang-github-hashicorp-yamux-dev
    podman
    runc
    redis-server
    redis-tools
    iperf3
    iproute2
    curl
    socat
    openssl
    haproxy
    nginx-light
    libnginx-mod-stream
    systemd
    python3-venv
    chromium
    mmdebstrap
    pipx
)

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    # dpkg-query prints "install ok installed" only for fully configured packages.
    status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
    if [[ "$status" != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} > 0)); then
    echo "install-test-deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${APT_PACKAGES[@]}"
else
    echo "install-test-deps: apt packages already present" >&2
fi

cd "$repo_root"
VENV="${RELAY_VENV:-$repo_root/.venv}"
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "install-test-deps: creating the virtual environment $VENV" >&2
    "${PYTHON:-python3}" -m venv "$VENV"
fi
VENV_PYTHON="$VENV/bin/python"
"$VENV_PYTHON" -m pip install -e '.[test]'

# Interop peers of two more yamux families (interop/families.py).
# Node.js and npm from Debian only where none is installed: a node from elsewhere (e.g. a
# nodesource build, which bundles npm) conflicts with Debian's npm package.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends nodejs npm
fi
# JS: @chainsafe/libp2p-yamux, exact versions from interop/js/package-lock.json. It needs
# Node.js >= 20; where the distribution's is older (Debian 12 ships 18), the npm registry's
# own Node 20 build goes into interop/.node (found there by interop/families.py).
node_major="$(node --version 2>/dev/null | sed -E 's/^v([0-9]+).*/\1/' || echo 0)"
if (( ${node_major:-0} < 20 )) && [[ ! -x interop/.node/node_modules/.bin/node ]]; then
    echo "install-test-deps: node ${node_major:-none} < 20, installing node@20 from npm" >&2
    npm install --no-audit --no-fund --prefix interop/.node node@20
fi
if [[ ! -d interop/js/node_modules/@chainsafe/libp2p-yamux ]] \
        || [[ interop/js/package-lock.json -nt interop/js/node_modules/.package-lock.json ]]; then
    (cd interop/js && npm ci --no-audit --no-fund)
fi
# py-libp2p (trio) in its own venv: its many dependencies stay out of the project's environment.
libp2p_venv=interop/.venv-libp2p
if ! "$libp2p_venv/bin/python" -c 'import libp2p.stream_muxer.yamux.yamux' 2>/dev/null; then
    "${PYTHON:-python3}" -m venv "$libp2p_venv"
    "$libp2p_venv/bin/python" -m pip install --quiet 'libp2p==0.8.1'
fi
