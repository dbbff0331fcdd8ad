#!/usr/bin/env bash
# Build the static Go interop programs into interop/build/.
#
# GOPATH mode against Debian's packaged hashicorp/yamux (golang-github-hashicorp-yamux-dev):
# no go.mod, nothing is downloaded. CGO_ENABLED=0 gives static binaries that run
# in the FROM-scratch image (interop/Containerfile).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$here/build}"
mkdir -p "$out"

# Debian's packaged sources, plus the project's own shared package (relayinterop/...).
debian_gopath="${YAMUX_GOPATH:-/usr/share/gocode}"
export GOPATH="$here/gopath:$debian_gopath"
export GO111MODULE=off
export CGO_ENABLED=0
# A writable build cache even when HOME is unset or read-only (CI containers).
if [[ -z "${GOCACHE:-}" ]]; then
    if [[ -n "${HOME:-}" && -w "${HOME}" ]]; then
        export GOCACHE="$HOME/.cache/go-build"
    else
        export GOCACHE="${TMPDIR:-/tmp}/relay-interop-gocache"
    fi
fi

if [[ ! -d "$debian_gopath/src/github.com/hashicorp/yamux" ]]; then
    echo "build.sh: $debian_gopath/src/github.com/hashicorp/yamux is missing" \
        "(apt-get install golang-github-hashicorp-yamux-dev)" >&2
    exit 1
fi

cd "$here/go"
for prog in yamux-peer go-relay go-forwarder loadgen echo-server echo-peer; do
    go build -trimpath -ldflags='-s -w' -o "$out/$prog" "./$prog"
done
echo "build.sh: built into $out" >&2
