# A kind node image made from Debian's packages (NODE_BASE, see rootfs.sh) and kind's own node files
# (files/: images/base/files of the sigs.k8s.io/kind module, taken from the module at build time), with
# the changes a machine without --privileged and without registries needs (rootfs/ and the RUN below).
ARG NODE_BASE
FROM ${NODE_BASE}
ARG KUBE_VERSION
ARG PAUSE_IMAGE
COPY files/ /
COPY voxa/ /
COPY bin/kube /usr/bin/kube
COPY bin/crictl /usr/local/bin/crictl
RUN set -eux; \
    chmod 0755 /usr/local/bin/* /kind /kind/bin /kind/bin/*; \
    for command in kubelet kubeadm kubectl; do ln -s kube "/usr/bin/$command"; done; \
    # kind's units start containerd from /usr/local/bin; Debian installs it in /usr/bin.
    ln -s /usr/bin/containerd /usr/local/bin/containerd; \
    mkdir -p /opt/cni/bin; \
    for plugin in /usr/lib/cni/*; do ln -s "$plugin" /opt/cni/bin/; done; \
    # As kind's base image: no services but the node's own, no kmsg in the journal.
    find /lib/systemd/system/sysinit.target.wants/ -name "systemd-tmpfiles-setup.service" -delete; \
    rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \
          /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \
          /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/*; \
    echo "ReadKMsg=no" >> /etc/systemd/journald.conf; \
    systemctl enable kubelet.service containerd.service undo-mount-hacks.service; \
    systemctl mask systemd-binfmt.service; \
    mkdir -p /etc/kubernetes/manifests; \
    echo "$KUBE_VERSION" > /kind/version; \
    # containerd's base spec, as kind makes it: its mount hook, and no rlimits (the machine's are lower).
    ctr oci spec \
      | jq '.hooks.createContainer[.hooks.createContainer | length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \
      | jq 'del(.process.rlimits)' > /etc/containerd/cri-base.json; \
    # The node cannot raise oom_score_adj (no CAP_SYS_RESOURCE), the pause image is the one kubeadm names,
    # and registries resolve through certs.d, where every host points at a closed local port.
    sed -i -e 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' \
           -e "s#sandbox_image = .*#sandbox_image = \"$PAUSE_IMAGE\"#" /etc/containerd/config.toml; \
    printf '\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/etc/containerd/certs.d"\n' \
      >> /etc/containerd/config.toml; \
    for registry in _default docker.io registry.k8s.io k8s.gcr.io gcr.io ghcr.io quay.io; do \
      mkdir -p "/etc/containerd/certs.d/$registry"; \
      printf 'server = "http://127.0.0.1:9"\n[host."http://127.0.0.1:9"]\n  capabilities = ["pull", "resolve"]\n' \
        > "/etc/containerd/certs.d/$registry/hosts.toml"; \
    done; \
    # Docker mounts cgroupfs read-only without --privileged: the entrypoint makes it writable first.
    sed -i 's|^fix_cgroup$|. /kind/bin/voxa-cgroup-rw.sh\nfix_cgroup|' /usr/local/bin/entrypoint; \
    grep -q voxa-cgroup-rw /usr/local/bin/entrypoint; \
    containerd --version; runc --version | head -n 1; kubelet --version
ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]
