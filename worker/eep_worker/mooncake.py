"""The only module that imports mooncake: a thin typed wrapper over `mooncake.pg`.

Called by `groups.py` (group creation options), `recovery.py` (peer state, recover, join), the step executor
(`execution.py`: success of a collective) and admission (`admission.py`: a joiner's peer state). Everything
else sees plain Python types. Importing this module loads the Mooncake backend, which registers the torch
backends `mooncake` (GPU) and `mooncake-cpu`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from mooncake import pg as _pg

from eep_contract.env import GPU_COLLECTIVES_ENV, GpuCollectives

__all__ = ["Mooncake", "RecoverResult"]


@dataclasses.dataclass(frozen=True)
class RecoverResult:
    """What `recover_ranks` answered: `applied` is True when the proposal took effect."""

    applied: bool
    status: str
    reason: str


class Mooncake:
    """Process-wide Mooncake settings and calls. One instance per rank process."""

    def configure(
        self,
        *,
        host_ip: str,
        collective_timeout_s: float,
        reconcile_window_s: float,
        gpu_collectives: GpuCollectives = GpuCollectives.NEW,
    ) -> None:
        """Must run before the first process group is created (Mooncake reads these at backend creation,
        ``gpu_collectives`` from its environment variable, which this sets for the process)."""
        os.environ[GPU_COLLECTIVES_ENV] = gpu_collectives.value
        _pg.set_host_ip(host_ip)
        _pg.set_collective_timeout_us(round(collective_timeout_s * 1e6))
        _pg.set_fault_reconciliation_window_us(round(reconcile_window_s * 1e6))

    def set_collective_timeout(self, seconds: float) -> None:
        """Mooncake's collective timeout, process-wide and live: every group of this process, collectives
        already in flight included, on the CPU path and the legacy GPU path, where a timeout only starts a
        liveness probe of the peer (a live peer is never condemned by it). Mooncake's V2 device collectives
        keep the value their group was created with (`device_group_timeout`)."""
        _pg.set_collective_timeout_us(round(seconds * 1e6))

    @contextlib.contextmanager
    def device_group_timeout(self, seconds: float, restore_s: float) -> Iterator[None]:
        """Groups created within the block get ``seconds`` as their V2 device collectives' timeout (fixed at
        creation); ``restore_s`` is set again on leaving, for everything else."""
        self.set_collective_timeout(seconds)
        try:
            yield
        finally:
            self.set_collective_timeout(restore_s)

    def options(self, group_size: int, is_extension: bool) -> Any:
        """`MooncakeBackendOptions` for a group of `group_size` ranks.

        Failed ranks are still deactivated by Mooncake's coordinator (``auto_deactivate_on_failure``), but a
        collective that saw a failure returns at once instead of blocking in ``sync_after_failure`` until the
        reconciliation window closes (``auto_sync_on_failure=False``). With the sync inside the failing
        collective, survivors that noticed the death in different collectives applied the new view at
        different points of their collective streams and hung (see `fence.py`). Mooncake then
        allocates the group's active-ranks mirror itself: read it with `active_ranks`."""
        return _pg.MooncakeBackendOptions(group_size, is_extension, True, False)

    def active_ranks(self, group: dist.ProcessGroup) -> torch.Tensor:
        """The group's active-ranks mirror (group-local order, 1 = active). Mooncake updates it in place when
        the view changes; a CPU group's mirror is readable without a collective or a device sync."""
        mirror: torch.Tensor = _pg.get_active_ranks(group)
        return mirror

    def failed_ranks(self, work: dist.Work) -> list[int]:
        """Group-local ranks this rank saw fail during the collective (empty when it succeeded). On GPU this
        reads device memory: call it only for a step already known to have failed."""
        hint = _pg.get_failed_ranks_hint(work)
        if hint is None or not hint.numel():
            return []
        return [i for i, flag in enumerate(hint.cpu().tolist()) if flag]

    def local_success(self, work: dist.Work) -> bool:
        """False when this rank saw a peer fail during the collective (its result is then partial)."""
        return bool(_pg.get_local_success(work))

    def all_succeeded(self, works: list[dist.Work]) -> bool:
        """`local_success` of every work, in one pass (the leader asks this every step)."""
        return all(map(_pg.get_local_success, works))

    def peer_ready(self, group: dist.ProcessGroup, local_ranks: list[int]) -> bool:
        """True when every listed group-local rank has started in extension mode and can be recovered."""
        return all(bool(s) for s in _pg.get_peer_state(group, local_ranks))

    def recover_ranks(self, group: dist.ProcessGroup, local_ranks: list[int]) -> RecoverResult:
        """Admit the listed group-local ranks (each blocks in `join_group`). Every survivor calls it."""
        response = _pg.recover_ranks(group, local_ranks)
        status = str(response.status)
        return RecoverResult(
            applied=status.endswith("Applied"), status=status, reason=str(response.reject_reason or "")
        )

    def join_group(self, group: dist.ProcessGroup) -> None:
        """Joiner side: blocks until the survivors call `recover_ranks` for this rank."""
        _pg.join_group(group)
