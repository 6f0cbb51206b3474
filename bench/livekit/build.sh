#!/usr/bin/env bash
# Build what the LiveKit target of bench/sfu.py runs, once per version of its inputs, and print the
# path of each binary asked for (one line each, in the order asked). Later runs only print the paths.
#
#   bench/livekit/build.sh [server] [load]
#     server -> ~/.cache/voxa/livekit/livekit-server-<version>-<hash>/livekit-server
#     load   -> ~/.cache/voxa/livekit/lkload-<hash>/lkload   (the Go load client, bench/livekit/load)
#   (no argument: both)
#
# Everything comes from the Go module proxy, never from a direct VCS fetch (GOPROXY has no `direct`).
# livekit-server v1.13.11's go.mod replaces pion/webrtc, pion/dtls and pion/ice with LiveKit's forks;
# the proxy serves none of those forks, so server/go.mod builds it against the upstream pion releases
# its go.mod requires. One call needs the fork: SettingEngine.EnableSped, made only when the optional
# "warp" transport is enabled (off unless configured): the build compiles a temporary copy of the
# downloaded module with that one line left out (a generated go.mod replaces the module with the
# copy; the checked-in go.mod and go.sum pin everything else). The benchmark's JSON says so
# (livekit.build_note).
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

# The configured proxy without any `direct`/`off` fallback entry.
proxy="$("$go_bin" env GOPROXY | tr ',|' '\n\n' | grep -v -x -e direct -e off -e '' | paste -sd, - || true)"
export GOPROXY="${proxy:-https://proxy.golang.org}"
export GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0

cache="${XDG_CACHE_HOME:-$HOME/.cache}/voxa/livekit"
targets=("$@")
((${#targets[@]})) || targets=(server load)

# build_once NAME DIR BINARY COMMAND...: run COMMAND (which writes $tmp) unless DIR/BINARY exists.
build_once() {
    local dir="$1" binary="$2"
    shift 2
    if [[ ! -x "$dir/$binary" ]]; then
        mkdir -p "$dir"
        (
            exec 9>"$dir/.lock"
            flock 9 # a concurrent build of the same inputs waits here, then finds the binary
            if [[ ! -x "$dir/$binary" ]]; then
                tmp="$(mktemp "$dir/$binary.XXXXXX")"
                trap 'rm -f "$tmp"' EXIT
                "$@" "$tmp" >&2
                chmod 0755 "$tmp"
                mv -f "$tmp" "$dir/$binary"
                trap - EXIT
            fi
        )
    fi
    echo "$dir/$binary"
}

build_server() {
    local out="$1" module_dir work rc=0
    cd "$here/server"
    module_dir="$("$go_bin" list -m -f '{{.Dir}}' github.com/livekit/livekit-server)"
    if [[ -z "$module_dir" || ! -d "$module_dir" ]]; then
        "$go_bin" mod download github.com/livekit/livekit-server
        module_dir="$("$go_bin" list -m -f '{{.Dir}}' github.com/livekit/livekit-server)"
    fi
    work="$(mktemp -d)"
    cp -r "$module_dir" "$work/livekit-server"
    chmod -R u+w "$work/livekit-server"
    local source="$work/livekit-server/pkg/rtc/transport.go"
    grep -v -x $'\t\tse.EnableSped(true)' "$module_dir/pkg/rtc/transport.go" >"$source" || true
    if [[ "$(($(wc -l <"$module_dir/pkg/rtc/transport.go") - $(wc -l <"$source")))" != 1 ]]; then
        echo "build.sh: expected exactly one EnableSped call in livekit-server's pkg/rtc/transport.go" >&2
        rm -rf "$work"
        return 1
    fi
    { cat go.mod; echo "replace github.com/livekit/livekit-server => $work/livekit-server"; } >"$work/go.mod"
    cp go.sum "$work/go.sum"
    "$go_bin" build -modfile "$work/go.mod" -trimpath -ldflags "-s -w" -o "$out" \
        github.com/livekit/livekit-server/cmd/server || rc=$?
    rm -rf "$work"
    return "$rc"
}

build_load() {
    local out="$1"
    cd "$here/load"
    "$go_bin" vet ./...
    "$go_bin" build -trimpath -ldflags "-s -w" -o "$out" .
}

for target in "${targets[@]}"; do
    case "$target" in
        server)
            version="$(awk '$1 == "require" && $2 == "github.com/livekit/livekit-server" { print $3 }' "$here/server/go.mod")"
            if [[ -z "$version" ]]; then
                echo "build.sh: server/go.mod does not require github.com/livekit/livekit-server" >&2
                exit 1
            fi
            hash="$(cat "$here/server/go.mod" "$here/server/go.sum" "$here/build.sh" | sha256sum | cut -c1-12)"
            build_once "$cache/livekit-server-$version-$hash" livekit-server build_server
            ;;
        load)
            hash="$(cat "$here/load/go.mod" "$here/load/go.sum" "$here"/load/*.go | sha256sum | cut -c1-12)"
            build_once "$cache/lkload-$hash" lkload build_load
            ;;
        *)
            echo "build.sh: unknown target $target (server or load)" >&2
            exit 2
            ;;
    esac
done
