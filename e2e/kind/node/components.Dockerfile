# The Kubernetes component images a kind node runs (e2e/kind/images.py tags them with the names
# `kubeadm config images list` prints): one multicall binary for kube-apiserver, kube-controller-manager,
# kube-scheduler, kube-proxy and etcd, on a Debian base with the netfilter tools kube-proxy runs;
# CoreDNS and pause, static, on nothing.
ARG NETFILTER_BASE

FROM ${NETFILTER_BASE} AS kube
COPY kube /usr/local/bin/kube
RUN for command in kube-apiserver kube-controller-manager kube-scheduler kube-proxy etcd; do \
        ln -s kube "/usr/local/bin/$command"; \
    done

FROM scratch AS coredns
COPY coredns /coredns
ENTRYPOINT ["/coredns"]

FROM scratch AS pause
COPY pause /pause
USER 65535:65535
ENTRYPOINT ["/pause"]
