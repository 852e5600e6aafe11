"""Free TCP ports on 127.0.0.1 for whatever a test, benchmark or the demo starts on this host.

The one implementation is `eep_localcluster.procs.free_port` (the local cluster needs it before the test kit
exists); this module gives the kit's users one import for it. Who uses it: `eep_testkit.pods` (coordinator,
rendezvous and HTTP ports of local pods), `eep_testkit.standin` (the ZMQ membership feed),
`eep_testkit.prometheus`, tests/operator, tests/alerts, tests/chart, bench/gpu_recovery.py (its coordinator).
"""

from __future__ import annotations

from eep_localcluster.procs import free_port

__all__ = ["free_port"]
