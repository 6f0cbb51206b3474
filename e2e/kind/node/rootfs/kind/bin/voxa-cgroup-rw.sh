# Sourced by kind's node entrypoint before it fixes the cgroup mounts (see node.Dockerfile). Without
# --privileged, Docker mounts /sys/fs/cgroup and every hierarchy in it read-only; systemd and the
# kubelet must create cgroups there.
if grep -q ' /sys/fs/cgroup .*\bro\b' /proc/self/mountinfo 2>/dev/null || [ ! -w /sys/fs/cgroup ]; then
  mount -o remount,rw /sys/fs/cgroup 2>/dev/null || true
fi
for mnt in $(findmnt -lun -o target -t cgroup,cgroup2); do
  mount -o remount,bind,rw "$mnt" 2>/dev/null || log_warn "could not make $mnt writable"
done
