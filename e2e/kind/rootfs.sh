#!/usr/bin/env bash
# Builds a Debian bookworm root filesystem from Debian's packages with debootstrap, once per package
# set, and prints the path of its tarball (cached under ~/.cache/voxa/rootfs/):
#
#   e2e/kind/rootfs.sh python   -> ~/.cache/voxa/rootfs/python-<hash>.tar
#
# These are the bases Voxa's images are built on here, where no registry serves images: `docker import`
# turns a tarball into a base image (e2e/kind/images.py). The sets:
#   python  Python 3.11 with venv: the voxa image's BASE_IMAGE (what python:3.11-slim is elsewhere)
#   redis   redis-server: the managed-Redis image's base
#   netfilter  iptables, nftables, conntrack: the Kubernetes component images (kube-proxy needs them)
#   node    systemd, containerd, runc, CNI plugins and the tools kubelet uses: the kind node image
# Downloaded packages are kept in a shared cache, so a second set or a rebuild fetches only what is
# new. Needs root (debootstrap) and the Debian mirror.
set -euo pipefail

declare -A SETS=(
  [python]="python3 python3-venv ca-certificates"
  [redis]="redis-server"
  [netfilter]="iptables nftables conntrack"
  [node]="systemd systemd-sysv dbus containerd runc containernetworking-plugins iptables nftables conntrack
          iproute2 ethtool kmod libseccomp2 pigz jq util-linux mount bash ca-certificates procps"
)
MIRROR=${VOXA_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm

log() { echo "rootfs: $*" >&2; }

if [[ $# -ne 1 || -z "${SETS[$1]:-}" ]]; then
  echo "usage: $0 SET   (sets: ${!SETS[*]})" >&2
  exit 2
fi
set_name=$1
packages=$(echo ${SETS[$set_name]} | tr ' ' ',')
cache_root=${VOXA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/voxa}
hash=$(printf '%s\n' "$SUITE" "$packages" "$(sed -n '/^prune()/,/^}/p' "$0")" | sha256sum | cut -c1-12)
out=$cache_root/rootfs/$set_name-$hash.tar
if [[ -f "$out" ]]; then
  echo "$out"
  exit 0
fi

mkdir -p "$cache_root/rootfs" "$cache_root/rootfs/debs"
exec 9>"$cache_root/rootfs/.lock"
flock 9
if [[ -f "$out" ]]; then
  echo "$out"
  exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# What an image never needs: documentation, manuals, translations, apt's package lists and caches.
prune() {
  local root=$1
  $SUDO rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/usr/share/locale/* "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* \
    "$root"/var/cache/debconf/*-old "$root"/var/log/* "$root"/tmp/* "$root"/root/.cache
  # An image keeps no machine identity: systemd makes one at boot.
  $SUDO rm -f "$root"/etc/machine-id "$root"/var/lib/dbus/machine-id
  $SUDO touch "$root"/etc/machine-id
}

start=$(date +%s)
work=$(mktemp -d "$cache_root/rootfs/.build-$set_name.XXXXXX")
trap '$SUDO rm -rf "$work"' EXIT
log "debootstrap $SUITE ($set_name: $packages)"
$SUDO debootstrap --variant=minbase --include="$packages" --cache-dir="$cache_root/rootfs/debs" \
  "$SUITE" "$work/root" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
  tail -n 30 "$work/debootstrap.log" >&2
  exit 1
}
# The image's own apt sources, for users who extend it.
echo "deb $MIRROR $SUITE main" | $SUDO tee "$work/root/etc/apt/sources.list" >/dev/null
prune "$work/root"
$SUDO tar -C "$work/root" --numeric-owner -cf "$work/rootfs.tar" .
mv "$work/rootfs.tar" "$out"
log "built $out in $(($(date +%s) - start))s ($(du -h "$out" | cut -f1))"
echo "$out"
