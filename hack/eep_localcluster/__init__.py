"""A local Kubernetes control plane (real etcd, kube-apiserver, controller-manager, scheduler) plus "process
nodes": agents that register a Node and run the pods bound to it as local processes. Used by the integration
tests, the demo and the benchmarks on machines without Docker or kind. Entry point: `eep-localcluster`."""
