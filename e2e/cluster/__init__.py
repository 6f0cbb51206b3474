"""A local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
kwok as processes on loopback) for the operator's tests and `make cluster`; see controlplane.py."""
