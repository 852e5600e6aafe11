"""The SGLang admission trigger's sender: one background thread per cluster that POSTs to member 0.

`eep_operator.reconcile` calls `AdmissionTrigger.update(namespace, name, target)` after every plan with what
`eep_operator.core.admission.admission_target` decided (None: nothing to send). A new target replaces the
running sender, the same target keeps it, None stops it. A sender sends one request at a time, starts one
per `interval_s` at most, counts every result through the injected `AdmissionSink` (the operator's metrics),
and ends by itself after `max_s` seconds. Stopping never waits for a request in flight (threads are daemons
and the request has its own timeout).
"""

from __future__ import annotations

import http.client
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from eep_contract.reasons import AdmissionTriggerResult
from eep_operator.core.admission import AdmissionTarget

log = logging.getLogger("eep_operator.admission")
R = AdmissionTriggerResult


class AdmissionSink(Protocol):
    """Where the results go (`eep_operator.metrics.OperatorMetrics`). Must not raise."""

    def admission_request(self, namespace: str, cluster: str, result: AdmissionTriggerResult) -> None: ...


Send = Callable[[AdmissionTarget], AdmissionTriggerResult]
"""One request to the target; never raises (every failure is a result)."""


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Member 0 is a pod IP inside the cluster: never through an HTTP proxy of the operator's environment."""


def post(target: AdmissionTarget) -> AdmissionTriggerResult:
    """POST the target's body, read the answer, classify it."""
    request = urllib.request.Request(
        target.url, data=target.body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with _DIRECT.open(request, timeout=target.timeout_s) as response:
            response.read()
            return R.SUCCEEDED if 200 <= response.status < 300 else R.HTTP_ERROR
    except urllib.error.HTTPError:
        return R.HTTP_ERROR
    except urllib.error.URLError as e:
        return R.TIMEOUT if isinstance(e.reason, TimeoutError | socket.timeout) else R.UNREACHABLE
    except TimeoutError:
        return R.TIMEOUT
    except (OSError, http.client.HTTPException):
        return R.UNREACHABLE


class _Sender:
    """One cluster's requests for one target, in a daemon thread."""

    def __init__(
        self,
        namespace: str,
        cluster: str,
        target: AdmissionTarget,
        *,
        sink: AdmissionSink,
        send: Send,
        clock: Callable[[], float],
    ) -> None:
        self.namespace, self.cluster, self.target = namespace, cluster, target
        self.sink, self.send, self.clock = sink, send, clock
        self.stopped = threading.Event()
        self.results: Counter[str] = Counter()
        self.thread = threading.Thread(target=self._run, name=f"admission-{namespace}/{cluster}", daemon=True)

    def start(self) -> None:
        log.info(
            "admission trigger on: POST %s every %gs while %s join",
            self.target.url, self.target.interval_s, ",".join(self.target.joiners),
            extra={"cluster": f"{self.namespace}/{self.cluster}"},
        )  # fmt: skip
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()

    def _run(self) -> None:
        t = self.target
        deadline = self.clock() + t.max_s
        while not self.stopped.is_set() and self.clock() < deadline:
            started = self.clock()
            result = self.send(t)
            if self.stopped.is_set():
                break  # the answer to a request of a target nobody wants any more: not counted
            self.results[result.value] += 1
            self.sink.admission_request(self.namespace, self.cluster, result)
            self.stopped.wait(max(0.0, t.interval_s - (self.clock() - started)))
        log.info(
            "admission trigger off after %d request(s): %s", sum(self.results.values()), dict(self.results),
            extra={"cluster": f"{self.namespace}/{self.cluster}"},
        )  # fmt: skip


class AdmissionTrigger:
    """Per-cluster senders, driven level-triggered by the reconciles. Thread-safe (reconciles of different
    clusters run in parallel; one cluster's are serialised by `handlers.Runtime`)."""

    def __init__(
        self, sink: AdmissionSink, *, send: Send = post, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.sink = sink
        self.send = send
        self.clock = clock
        self._senders: dict[tuple[str, str], _Sender] = {}
        self._lock = threading.Lock()

    def update(self, namespace: str, cluster: str, target: AdmissionTarget | None) -> None:
        """Make `target` the cluster's only sender (None: no sender). The same target as before keeps its
        sender, also one that ended by itself after `max_s`."""
        key = (namespace, cluster)
        with self._lock:
            old = self._senders.get(key)
            if old is not None and old.target == target:
                return
            if old is not None:
                old.stop()
                del self._senders[key]
            if target is not None:
                sender = _Sender(namespace, cluster, target, sink=self.sink, send=self.send, clock=self.clock)
                self._senders[key] = sender
                sender.start()

    def active(self, namespace: str, cluster: str) -> AdmissionTarget | None:
        """The target whose sender is running for the cluster, if any."""
        with self._lock:
            sender = self._senders.get((namespace, cluster))
        return sender.target if sender is not None and sender.thread.is_alive() else None

    def stop_all(self) -> None:
        """Stop every sender (the operator lost its Lease, or is shutting down)."""
        with self._lock:
            senders = list(self._senders.values())
            self._senders.clear()
        for sender in senders:
            sender.stop()
