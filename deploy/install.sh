#!/usr/bin/env bash
# Install relay from this repository for the systemd units beside this script, as root
# on Debian 12:
#
#   bash deploy/install.sh && systemctl enable --now relay
#
# 1. builds a wheel of the repository (python -m build, in a throwaway environment),
# 2. installs it with its dependencies into the virtual environment $PREFIX (/opt/relay),
# 3. puts the example configs and a new secret (0600, never overwritten) in $CONFIG_DIR
#    (/etc/relay), unless they are there already,
# 4. installs relay.service and relay-forward.service into $UNIT_DIR (/etc/systemd/system).
#
# PREFIX, CONFIG_DIR, UNIT_DIR and PYTHON (python3) may be set to install elsewhere; the
# units are written with those paths. Rerunning it upgrades the installation and keeps the
# configs and the secret.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="${PREFIX:-/opt/relay}"
CONFIG_DIR="${CONFIG_DIR:-/etc/relay}"
UNIT_DIR="${UNIT_DIR:-/etc/systemd/system}"
PYTHON="${PYTHON:-python3}"

if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    echo "install: $PYTHON cannot make virtual environments; installing python3-venv" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "install: building the wheel of $repo" >&2
"$PYTHON" -m venv "$work/build-env"
"$work/build-env/bin/pip" install --quiet build
if ! "$work/build-env/bin/python" -m build --wheel --outdir "$work/dist" "$repo" \
    >"$work/build.log" 2>&1; then
    cat "$work/build.log" >&2
    exit 1
fi
wheels=("$work"/dist/yamux_relay-*.whl)

echo "install: installing ${wheels[0]##*/} into $PREFIX" >&2
"$PYTHON" -m venv "$PREFIX"
"$PREFIX/bin/pip" install --quiet --upgrade "${wheels[0]}[fast]"
"$PREFIX/bin/relay" --version

install -d -m 0755 "$CONFIG_DIR"
for example in relay.toml forward.toml; do
    if [[ ! -e "$CONFIG_DIR/$example" ]]; then
        install -m 0644 "$repo/deploy/$example" "$CONFIG_DIR/$example"
    fi
done
if [[ ! -s "$CONFIG_DIR/relay.secret" ]]; then
    # 256 random bits, readable by root only; the units hand it over as a credential.
    (umask 077 && "$PREFIX/bin/python" -c 'import secrets; print(secrets.token_hex(32))' \
        >"$CONFIG_DIR/relay.secret")
    echo "install: new secret in $CONFIG_DIR/relay.secret (copy it to the forwarders)" >&2
fi

install -d -m 0755 "$UNIT_DIR"
for unit in relay.service relay-forward.service; do
    sed -e "s|/opt/relay/|$PREFIX/|g" -e "s|/etc/relay/|$CONFIG_DIR/|g" \
        "$repo/deploy/$unit" >"$UNIT_DIR/$unit"
    chmod 0644 "$UNIT_DIR/$unit"
done
if [[ -d /run/systemd/system ]]; then
    systemctl daemon-reload
fi
echo "install: done; see $CONFIG_DIR/relay.toml, then: systemctl enable --now relay" >&2
