"""`make demo` (`python -m eep_demo`): the whole loop on the local control plane, measured.

Modules: `client` (load generator: retries, attempts; the checking is the test kit's), `timeline` (pure
recovery metrics), `cluster` (thin Kubernetes/process I/O: status sampling, member-0 address, killing a pod's
processes, helm), `live` (the live member table), `scenario` (the steps, shared by the demo, the e2e test and
the benchmarks), `__main__` (the CLI). The reference check, Prometheus, membership readers and pumps come from
the test kit (`eep_testkit`).
"""
