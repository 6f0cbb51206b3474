#!/usr/bin/env bash
# Builds a Go tool of the kind cluster (and of the chart checks) once per version, and prints its path:
#
#   e2e/kind/tools.sh helm      -> ~/.cache/voxa/tools/helm-v3.22.0-<hash of its pin>/helm
#   e2e/kind/tools.sh all       -> builds every tool, prints one path per line
#   e2e/kind/tools.sh --version kind  -> v0.32.0 (the pinned version, nothing built)
#
# Each tool is `go install`ed from its own module at the version pinned below (none of these modules has
# replace directives, so the module's own go.sum applies and is checked against the checksum database).
# Go's module and build caches are the default ones, which survive between runs; concurrent builds of
# one tool take turns on a lock.
set -euo pipefail

# tool -> "module version package [ldflags]"
declare -A TOOLS=(
  [kind]="sigs.k8s.io/kind v0.32.0 sigs.k8s.io/kind"
  # Its default Kubernetes version (what `helm template` and `helm lint` assume) is the clusters' own.
  [helm]="helm.sh/helm/v3 v3.22.0 helm.sh/helm/v3/cmd/helm -X helm.sh/helm/v3/internal/version.version=v3.22.0 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=35"
  [coredns]="github.com/coredns/coredns v1.13.1 github.com/coredns/coredns"
  [crictl]="sigs.k8s.io/cri-tools v1.34.0 sigs.k8s.io/cri-tools/cmd/crictl -X sigs.k8s.io/cri-tools/pkg/version.Version=v1.34.0"
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
  local dir
  dir=$cache_root/tools/$tool-$version-$(printf '%s' "$spec" | sha256sum | cut -c1-8)
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

if [[ $# -eq 2 && $1 == --version ]]; then
  read -r _ version _ <<<"${TOOLS[$2]:?unknown tool $2}"
  echo "$version"
  exit 0
fi
if [[ $# -ne 1 ]]; then
  echo "usage: $0 TOOL|all, or $0 --version TOOL   (tools: ${!TOOLS[*]})" >&2
  exit 2
fi
if [[ $1 == all ]]; then
  for tool in kind helm crictl coredns; do
    build "$tool"
  done
else
  build "$1"
fi
