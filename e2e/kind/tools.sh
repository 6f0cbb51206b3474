#!/usr/bin/env bash
# Builds a Go tool of the kind cluster (and of the chart checks) once per version, and prints its path:
#
#   e2e/kind/tools.sh helm      -> ~/.cache/voxa/tools/helm-v3.22.0/helm
#   e2e/kind/tools.sh all       -> builds every tool, prints one path per line
#
# Each tool is `go install`ed from its own module at the version pinned below (none of these modules has
# replace directives, so the module's own go.sum applies and is checked against the checksum database).
# Go's module and build caches are the default ones, which survive between runs; concurrent builds of
# one tool take turns on a lock.
set -euo pipefail

# tool -> "module version package [ldflags]"
declare -A TOOLS=(
  [kind]="sigs.k8s.io/kind v0.32.0 sigs.k8s.io/kind"
  [helm]="helm.sh/helm/v3 v3.22.0 helm.sh/helm/v3/cmd/helm -X helm.sh/helm/v3/internal/version.version=v3.22.0"
  [coredns]="github.com/coredns/coredns v1.13.1 github.com/coredns/coredns"
  [crictl]="sigs.k8s.io/cri-tools v1.34.0 sigs.k8s.io/cri-tools/cmd/crictl -X sigs.k8s.io/cri-tools/pkg/version.Version=v1.34.0"
  [kube-network-policies]="sigs.k8s.io/kube-network-policies v0.8.0 sigs.k8s.io/kube-network-policies/cmd"
)

log() { echo "tools: $*" >&2; }

go_bin=$(command -v go || true)
if [[ -z "$go_bin" && -x /usr/local/go/bin/go ]]; then
  go_bin=/usr/local/go/bin/go
fi
if [[ -z "$go_bin" ]]; then
  log "no Go toolchain (looked on PATH and at /usr/local/go/bin/go)"
  exit 1
fi
cache_root=${VOXA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/voxa}

build() {
  local tool=$1
  local spec=${TOOLS[$tool]:-}
  if [[ -z "$spec" ]]; then
    log "unknown tool $tool (known: ${!TOOLS[*]})"
    return 1
  fi
  local module version package ldflags
  read -r module version package ldflags <<<"$spec"
  local dir=$cache_root/tools/$tool-$version
  local binary=$dir/$tool
  if [[ ! -x "$binary" ]]; then
    mkdir -p "$dir"
    exec 9>"$dir/.lock"
    flock 9
    if [[ ! -x "$binary" ]]; then
      log "building $tool $version from $module (cached afterwards)"
      local staging start
      staging=$(mktemp -d "$dir/.build.XXXXXX")
      start=$(date +%s)
      # The module proxy here serves what it serves: never fall back to fetching from the origin.
      GOBIN=$staging CGO_ENABLED=0 GOTOOLCHAIN=local GOPROXY=${GOPROXY_VOXA:-https://proxy.golang.org} \
        GOFLAGS= "$go_bin" install -trimpath -ldflags "-s -w ${ldflags:-}" "$package@$version" >&2
      local built
      built=$(find "$staging" -maxdepth 1 -type f | head -n 1)
      mv -f "$built" "$binary"
      rm -rf "$staging"
      log "built $tool in $(($(date +%s) - start))s"
    fi
    exec 9>&-
  fi
  echo "$binary"
}

if [[ $# -ne 1 ]]; then
  echo "usage: $0 TOOL|all   (tools: ${!TOOLS[*]})" >&2
  exit 2
fi
if [[ $1 == all ]]; then
  for tool in kind helm crictl coredns kube-network-policies; do
    build "$tool"
  done
else
  build "$1"
fi
