#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian 12 machine (run as root).
#
# Idempotent: apt is skipped when every package is already installed, so reruns
# are fast. Afterwards the project itself is installed in editable mode with its
# test extras.
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
"${PYTHON:-python3}" -m pip install -e '.[test]'
