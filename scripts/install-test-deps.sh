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
    curl
    socat
    openssl
    haproxy
    nginx-light
    libnginx-mod-stream
    systemd
    python3-venv
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
