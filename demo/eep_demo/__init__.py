"""`make demo` (`python -m eep_demo`): the whole loop on the local control plane, measured.

Modules: `client` (load generator checking every answer against the float64 reference), `timeline` (pure
recovery metrics), `cluster` (thin Kubernetes/process I/O: status sampling, member-0 address, killing a pod's
processes, helm), `prom` (a real Prometheus with the alert rules), `live` (the live member table),
`scenario` (the steps, shared by the demo, the e2e test and the benchmarks), `__main__` (the CLI).
"""
