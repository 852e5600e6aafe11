"""Agreement between ranks out of band, through the TCPStore: a counting barrier and an all-or-nothing vote.

Who calls it: admission (`admission.py`) holds survivors and joiners at `StoreAgreement.barrier` after a
join, and `recovery.recover_survivor` asks the survivors of each group to `vote` on whether the joiners are
ready. Both go through the TCPStore (member 0 hosts it) and never through a process group: a collective can
fail on one rank alone while a joiner registers, and that rank would then decide alone (docs/known-issues.md,
"Mooncake's failure hints can name live ranks").

Both are built on `torch.distributed`'s own store primitives, as torch's elastic agent builds its barrier
(`torch.distributed.elastic.utils.store.barrier`): `Store.add` as the counter, and `Store.wait(keys,
timeout)`, which returns as soon as the keys exist and raises `DistStoreError` at the timeout. Neither polls.
Not torch's `barrier` function itself: it changes the store's default timeout for the duration
(`store_timeout`), and this store is the one the process groups were created with. `Store.wait` holds this
process's store client for the wait; nothing else in a rank uses the store at these points (Mooncake's control
plane speaks its own RPC once the groups exist).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Protocol

import torch.distributed as dist

__all__ = ["AgreementTimeout", "Store", "StoreAgreement"]


class Store(Protocol):
    """The part of `torch.distributed.Store` (a TCPStore client) the rank runtime uses. Every method may raise
    `RuntimeError` (torch's `DistError` family) when the store host is gone; `wait` raises
    `torch.distributed.DistStoreError` when its keys do not appear within `timeout`."""

    def add(self, key: str, value: int, /) -> int: ...
    def set(self, key: str, value: str, /) -> None: ...
    def get(self, key: str, /) -> bytes: ...
    def check(self, keys: list[str], /) -> bool: ...
    def wait(self, keys: list[str], timeout: timedelta, /) -> None: ...


class AgreementTimeout(TimeoutError):
    """Not every party reached the barrier within the timeout: `arrived` of `parties` did."""

    def __init__(self, name: str, arrived: int, parties: int) -> None:
        super().__init__(f"{arrived} of {parties} ranks reached {name!r}")
        self.arrived, self.parties = arrived, parties


class StoreAgreement:
    """One rank's side. ``timeout_s`` bounds every barrier and vote (the join timeout, in seconds)."""

    def __init__(self, store: Store, rank: int, timeout_s: float) -> None:
        self.store, self.rank = store, rank
        self.timeout = timedelta(seconds=timeout_s)

    def barrier(self, key: str, parties: int) -> None:
        """Return once ``parties`` ranks have called `barrier` with this ``key`` (use each key once).

        Every caller adds one to the counter at ``key``; the one that makes it ``parties`` sets
        ``key + "/all"``, which every caller waits for. Raises `AgreementTimeout` when that does not happen
        within the timeout, and RuntimeError when the store is unreachable."""
        done = f"{key}/all"
        if self.store.add(key, 1) >= parties:
            self.store.set(done, "1")
        try:
            self.store.wait([done], self.timeout)
        except dist.DistStoreError:
            raise AgreementTimeout(key, self.store.add(key, 0), parties) from None

    def vote(self, name: str, voters: list[int], vote: bool) -> bool:
        """An all-or-nothing vote: True when every one of ``voters`` (global ranks, this one among them)
        voted True. Every voter reads every vote, so all decide the same. A voter that has not voted within
        the timeout counts as a no (the others then give up too; the silent one is stuck or dead, and the
        step watchdog or the operator handles it). Raises RuntimeError when the store is unreachable while it
        votes or reads the votes."""
        key = f"eep/vote/{name}"
        self.store.set(f"{key}/{self.rank}", "1" if vote else "0")
        keys = [f"{key}/{r}" for r in voters]
        try:
            self.store.wait(keys, self.timeout)
        except RuntimeError:  # torch's DistStoreError (a RuntimeError): some voter never voted
            return False
        return all(bytes(self.store.get(k)) == b"1" for k in keys)
