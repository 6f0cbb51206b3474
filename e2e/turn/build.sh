#!/usr/bin/env bash
# Build stunnerd (STUNner's TURN dataplane) at the version pinned in go.mod, once per go.mod+go.sum,
# and print the binary's path. Later runs only print the path of the cached binary.
#
#   e2e/turn/build.sh          -> ~/.cache/voxa/stunnerd-<version>-<hash>/stunnerd
#
# Everything comes from the Go module proxy. The replace in go.mod repeats STUNner's own (its fork of
# pion/turn); the checksum database has no entry for that fork's pseudo-version, so it is exempted
# from the lookup (GONOSUMDB) and pinned by go.sum instead, whose hash is the one in STUNner v1.1.0's
# own go.sum.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
go_bin="$(command -v go || true)"
if [[ -z "$go_bin" && -x /usr/local/go/bin/go ]]; then
    go_bin=/usr/local/go/bin/go
fi
if [[ -z "$go_bin" ]]; then
    echo "build.sh: no Go toolchain (looked on PATH and at /usr/local/go/bin/go)" >&2
    exit 1
fi

version="$(awk '$1 == "require" && $2 == "github.com/l7mp/stunner" { print $3 }' "$here/go.mod")"
if [[ -z "$version" ]]; then
    echo "build.sh: go.mod does not require github.com/l7mp/stunner" >&2
    exit 1
fi
hash="$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-12)"
dir="${XDG_CACHE_HOME:-$HOME/.cache}/voxa/stunnerd-$version-$hash"
binary="$dir/stunnerd"

if [[ ! -x "$binary" ]]; then
    mkdir -p "$dir"
    exec 9>"$dir/.lock"
    flock 9  # a concurrent build of the same version waits here, then finds the binary
    if [[ ! -x "$binary" ]]; then
        tmp="$(mktemp "$dir/stunnerd.XXXXXX")"
        trap 'rm -f "$tmp"' EXIT
        (
            cd "$here"
            CGO_ENABLED=0 GOFLAGS=-mod=readonly GONOSUMDB=github.com/l7mp/turn \
                "$go_bin" build -trimpath -ldflags "-s -w -X main.version=$version" \
                -o "$tmp" github.com/l7mp/stunner/cmd/stunnerd
        ) >&2
        chmod 0755 "$tmp"
        mv -f "$tmp" "$binary"
        trap - EXIT
    fi
fi
echo "$binary"
