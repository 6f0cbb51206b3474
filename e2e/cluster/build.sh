#!/usr/bin/env bash
# Builds the Kubernetes commands Voxa's clusters use from the versions pinned in this folder's go.mod,
# and prints the folder that holds them on stdout; everything else goes to stderr.
#
# kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, kubelet, kubeadm, kubectl and
# etcd are one static multicall binary (kube/main.go), `kube`, and a symlink per command: the local
# control plane (`make cluster`, the kube_cluster fixture) runs them as processes, and the kind node
# image (e2e/kind/) is built from the same binary, so Kubernetes is compiled once. kwok comes from the
# module in kwok/ (no kwok release compiles against the client libraries of this Kubernetes release).
#
# The first run compiles Kubernetes from source, which takes many minutes on a small machine; the
# binaries are then kept under ~/.cache/voxa/kube-<version>-<hash of the go.mod and go.sum files>/bin,
# so every later run (and every test session) returns at once, and a change of pins builds anew.
# Go's module and build caches are the default ones (~/go/pkg/mod, ~/.cache/go-build), which also
# survive between runs. Safe to run concurrently: builders take turns on a lock.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { echo "cluster-tools: $*" >&2; }

GO=${GO:-}
if [ -z "$GO" ]; then
  if command -v go >/dev/null 2>&1; then
    GO=$(command -v go)
  elif [ -x /usr/local/go/bin/go ]; then
    GO=/usr/local/go/bin/go
  else
    log "no Go toolchain found (set GO=/path/to/go)"
    exit 1
  fi
fi

# The version a go.mod requires of a module, in the block form or in the one-line form.
pinned() { awk -v m="$1" '$1 == m && $2 ~ /^v/ { print $2; exit } $1 == "require" && $2 == m { print $3; exit }' "$2"; }
kube_version=$(pinned k8s.io/kubernetes "$here/go.mod")
etcd_version=$(pinned go.etcd.io/etcd/server/v3 "$here/go.mod")
kwok_version=$(pinned sigs.k8s.io/kwok "$here/kwok/go.mod")
if [ -z "$kube_version" ] || [ -z "$kwok_version" ] || [ -z "$etcd_version" ]; then
  log "cannot read the pinned versions from $here/go.mod and $here/kwok/go.mod"
  exit 1
fi
pins_hash=$(cat "$here/go.mod" "$here/go.sum" "$here/kube/main.go" "$here/kwok/go.mod" "$here/kwok/go.sum" | sha256sum | cut -c1-12)
cache_root=${VOXA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/voxa}
dest=$cache_root/kube-$kube_version-$pins_hash
bin=$dest/bin
commands=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet kubeadm kubectl etcd)
tools=(kube "${commands[@]}" kwok)

complete() {
  [ -f "$dest/.complete" ] || return 1
  local tool
  for tool in "${tools[@]}"; do
    [ -x "$bin/$tool" ] || return 1
  done
}

if complete; then
  echo "$bin"
  exit 0
fi

mkdir -p "$dest"
exec 9>"$dest/.lock"
flock 9
if complete; then # another builder finished while this one waited
  echo "$bin"
  exit 0
fi

major=${kube_version#v}
major=${major%%.*}
minor=${kube_version#v*.}
minor=${minor%%.*}
build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
# What `kubectl version` and the components report; a plain `go build` would leave v0.0.0-master.
kube_ldflags=(-s -w "-X go.etcd.io/etcd/api/v3/version.GitSHA=$etcd_version")
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=(
    "-X $pkg.gitVersion=$kube_version"
    "-X $pkg.gitMajor=$major"
    "-X $pkg.gitMinor=$minor"
    "-X $pkg.gitTreeState=clean"
    "-X $pkg.buildDate=$build_date"
  )
done
kwok_ldflags=(
  -s -w
  "-X sigs.k8s.io/kwok/pkg/consts.Version=${kwok_version#v}"
  "-X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${kube_version#v}"
)

log "building Kubernetes $kube_version, kwok $kwok_version and etcd $etcd_version into $bin"
log "(the first build compiles Kubernetes from source and takes a while; later runs reuse it)"
staging=$(mktemp -d "$dest/.build.XXXXXX")
trap 'rm -rf "$staging"' EXIT
chmod 755 "$staging"
start=$(date +%s)
(
  export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=readonly
  cd "$here"
  "$GO" build -trimpath -ldflags "${kube_ldflags[*]}" -o "$staging/kube" ./kube
  cd "$here/kwok"
  "$GO" build -trimpath -ldflags "${kwok_ldflags[*]}" -o "$staging/kwok" sigs.k8s.io/kwok/cmd/kwok
) >&2
for command in "${commands[@]}"; do
  ln -s kube "$staging/$command"
done
rm -rf "$bin"
mv "$staging" "$bin"
trap - EXIT
echo "$kube_version $kwok_version $etcd_version $(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$dest/.complete"
log "built in $(($(date +%s) - start))s"
echo "$bin"
