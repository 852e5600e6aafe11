"""The operator stand-in: it publishes membership snapshots the way the operator's status does, without an
API server, to pods whose membership source is a file or a ZMQ feed.

Each `publish` bumps the epoch by one (the operator's fencing rule) and sends the contract's wire form,
`Membership(...).to_wire()` (`eep_contract.v1alpha1`), which the worker parses with
`eep_contract.wire.parse_membership`. Sinks: `MembershipFile` (written atomically: the reader never sees half
a file) and `MembershipFeed` (a ZMQ PUB socket that re-sends the latest snapshot, so a subscriber that
connects late still gets it). Each sink also points a pod's `TuningEnv` at itself.

Who uses it: `eep_testkit.pods` (every local pod group has one), tests/worker (through `LocalPods`),
bench/cpu_recovery.py; bench/gpu_recovery.py writes its membership file with it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from eep_contract.env import TuningEnv
from eep_contract.v1alpha1 import Membership
from eep_testkit.ports import free_port
from eep_testkit.pump import Pump

__all__ = ["MembershipFeed", "MembershipFile", "MembershipSink", "OperatorStandIn"]


class MembershipSink(Protocol):
    """Where snapshots go. `send` raises OSError (file) or zmq.ZMQError (feed) when it cannot deliver."""

    def send(self, text: str) -> None: ...

    def point(self, tuning: TuningEnv) -> TuningEnv:
        """`tuning` with the pod's membership source pointed here."""
        ...

    def close(self) -> None: ...


class MembershipFile:
    """A JSON file, replaced atomically on every send (the worker's `FileSource` polls it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def send(self, text: str) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(self.path)

    def point(self, tuning: TuningEnv) -> TuningEnv:
        return dataclasses.replace(tuning, membership_source="file", membership_file=str(self.path))

    def close(self) -> None:
        pass


class MembershipFeed:
    """A ZMQ PUB socket on 127.0.0.1 (the worker's `ZmqSource` subscribes). Publishing is fire-and-forget,
    so the latest snapshot is sent again every `repeat_s` seconds; the worker ignores one it already has."""

    def __init__(self, port: int | None = None, repeat_s: float = 0.2) -> None:
        import zmq  # noqa: PLC0415 - only the feed needs pyzmq

        self.port = free_port() if port is None else port
        self.address = f"tcp://127.0.0.1:{self.port}"
        self._zmq_context: Any = zmq.Context.instance()
        self._socket: Any = self._zmq_context.socket(zmq.PUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(self.address)
        self._latest: bytes | None = None
        self._repeat = Pump(self._resend, name="membership-feed", interval_s=repeat_s)
        self._repeat.start()

    def send(self, text: str) -> None:
        self._latest = text.encode()
        self._socket.send(self._latest)

    def _resend(self) -> None:
        if self._latest is not None:
            self._socket.send(self._latest)

    def point(self, tuning: TuningEnv) -> TuningEnv:
        return dataclasses.replace(tuning, membership_source="zmq", membership_zmq=self.address)

    def close(self) -> None:
        self._repeat.stop()
        self._socket.close()


class OperatorStandIn:
    """The operator's part in the membership protocol: epochs that only grow, snapshots in the wire form."""

    def __init__(self, sink: MembershipSink) -> None:
        self.sink = sink
        self.epoch = 0
        self.published: list[Membership] = []

    def publish(self, active: Iterable[int], joining: Iterable[int] = ()) -> Membership:
        """Send the next epoch's snapshot (ranks sorted, as the operator writes them) and return it."""
        self.epoch += 1
        snapshot = Membership(epoch=self.epoch, active_ranks=sorted(active), joining_ranks=sorted(joining))
        self.sink.send(json.dumps(snapshot.to_wire()))
        self.published.append(snapshot)
        return snapshot

    def publish_raw(self, text: str) -> None:
        """Send `text` unchanged (a malformed snapshot, to test the reader); the epoch does not move."""
        self.sink.send(text)

    def close(self) -> None:
        self.sink.close()
