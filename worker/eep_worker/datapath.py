"""The data path: how a rank's combine all-reduces travel, and the start-up probe that chooses it.

Who calls it: the rank (`rank.RankRuntime.start`) calls `select` once, after its groups and model exist and
before it serves; the step executor (`execution.StepExecutor.combine`) sends every combine through the chosen
`CombinePath`. The GPU benchmark reports the choice (`Choice.mode`).

Two paths (the contract's `DataPath`, `spec.elasticEP.dataPath`):
- `DevicePath`: Mooncake's device collectives on the device world group. On one host they take the
  peer-to-peer (CUDA IPC) route; between hosts RDMA or, without RDMA, the host-proxy route over the transfer
  engine's TCP, where a 16-float all-reduce on two H200s took 45 s and left rank 0 with its own value
  (docs/known-issues.md, "Members on different hosts").
- `StagedPath`: device tensor -> pinned host buffer (a non-blocking copy, then a sync of the current stream:
  one host sync per combine, which `torch.cuda.set_sync_debug_mode` sees) -> all-reduce on the CPU world group
  (Mooncake's CPU backend, which already carries the plan and the recovery metadata) -> back to the device
  (non-blocking, ordered on the same stream before the next copy out). On mooncake-cpu the "device" tensors
  are CPU tensors: a copy and the same CPU collective.

The probe (`probe`) checks values, not only completion: every rank all-reduces a known pattern (`pattern`:
rank + 1 times 1..7 cycling along the elements, float32, exact for any world of the contract) at the sizes of
`probe_sizes` up to the combine's, `PROBE_REPEATS` times each; each result must equal the exact sum and each
work must report Mooncake's `local_success`. It runs on a helper thread, bounded by
`Settings.probe_timeout_s`: past the bound the route counts as failed. Every rank's verdict goes to an
all-or-nothing vote through the TCPStore (`agreement.StoreAgreement.vote`), so every rank picks the same path,
and a route that one rank saw fail is not used by any. Ranks meet at a barrier before each probe, so a late
rank does not fail a device collective by its lateness alone (a device collective's timeout is a failure, not
a liveness check).

Selection (`probe_order`, `select`): `Device` probes the device route only; `Staged` the staged route only;
`Auto` the device route, then, if any rank failed it, the staged route; but members on several hosts without
RDMA (`placement`: every rank's node name, `EEP_NODE_NAME`, through the TCPStore) probe the staged route
only, because the host-proxy device route passes a probe and stalls under load. Before probing the staged
route after a device probe that outlived its bound, a rank waits (`Settings.probe_drain_s`) for that
collective to return: the staged copies queue on the same stream. When no route passes, `select` raises
`NoDataPath` naming the routes and what this rank saw; the rank exits with `ExitCode.NO_DATA_PATH`. A joiner
does not probe (the survivors serve meanwhile): it takes the mode rank 0 published in the TCPStore
(`MODE_KEY`).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch
import torch.distributed as dist

from eep_contract.env import DataPath

__all__ = [
    "MODE_KEY",
    "NODE_KEY",
    "PROBE_REPEATS",
    "Choice",
    "CombinePath",
    "DevicePath",
    "NoDataPath",
    "Placement",
    "ProbeResult",
    "StagedPath",
    "Stamped",
    "check_values",
    "pattern",
    "piece_bytes",
    "placement",
    "probe",
    "probe_order",
    "probe_sizes",
    "select",
]

log = logging.getLogger(__name__)

MODE_KEY = "eep/data-path"
"""TCPStore key under which rank 0 publishes the chosen mode (`DataPath` value) for joiners."""
PROBE_REPEATS = 2
"""All-reduces per probe size: the first pays for connection set-up, the second is a steady one."""
PATTERN_PERIOD = 7
"""`pattern` cycles through 1..7 along the elements, so a misplaced chunk shows too."""
SMALL_SIZES = (16, 4096)
"""Probe sizes (elements) below the combine's own."""

Success = Callable[[Any], bool]
"""Mooncake's `local_success` of a work (`mooncake.Mooncake.local_success`)."""


class CombinePath(Protocol):
    """How one combine all-reduce (SUM over the world) travels. `all_reduce` raises what torch.distributed
    raises; a peer that failed during it is not an exception but a work whose `local_success` is False."""

    @property
    def mode(self) -> DataPath: ...
    @property
    def route(self) -> str:
        """The route in words, for logs and exit messages."""
        ...

    @property
    def stamp_sum(self) -> float | None:
        """The sum of the stamps of the last `all_reduce` (`Stamped`); None where the route carries none."""
        ...

    def all_reduce(self, t: torch.Tensor, stamp: int = 0) -> dist.Work:
        """All-reduce ``t`` in place, waited as the next kernel needs it (on GPU: ordered on the current
        stream); returns the work, for `local_success`. ``stamp``: this rank's stamp of the op (`Stamped`),
        summed beside ``t`` where the route goes through host memory."""
        ...


def piece_bytes(group_size: int) -> int:
    """Bytes of the largest all-reduce Mooncake does not split on a group of ``group_size`` ranks: its chunk,
    ``(kBufferSize - 1) / maxGroupSize`` rounded down to 8 (mooncake-pg at 3b5a594: `kBufferSize = 1 << 24`
    in `include/mooncake_worker.cuh`, the chunking in `src/mooncake_worker_host.cpp` ~181), with the
    group's size for its `maxGroupSize` (the size the worker creates it with)."""
    return ((1 << 24) - 1) // max(1, group_size) & ~7


class Stamped:
    """An all-reduce through host memory in which each op carries one more element: each rank's stamp of the
    op, whose sum (`stamp_sum`) tells whether every rank's data in the result is of this op. Why: Mooncake's
    CPU collectives end an op on a per-peer flag that carries no sequence number, and a flag that lands late
    ends the next op in the same buffer slot at once, on that peer's data of the earlier op
    (docs/known-issues.md, "Mooncake's collectives can lag a step"): the sum is then wrong and the work
    reports a success. The check costs a host read, free where the data is on the host already. A tensor
    larger than one Mooncake chunk (`piece_bytes` with its stamp) goes in several all-reduces of at most a
    chunk each, each stamped: Mooncake would otherwise split it itself, and only its last chunk would carry
    the stamp.

    The buffer holds ``numel`` elements of ``dtype`` and a stamp (pinned on GPU) and grows if a larger
    tensor comes."""

    def __init__(self, group: dist.ProcessGroup, *, numel: int, dtype: torch.dtype, pin: bool) -> None:
        self.group, self.pin = group, pin
        self.host = torch.empty(numel + 1, dtype=dtype, pin_memory=pin)
        self.piece_bytes = piece_bytes(group.size())
        """The largest all-reduce this makes, stamp included (`piece_bytes`)."""
        self.piece = torch.empty(0, dtype=dtype)
        """Where one piece of a tensor larger than a chunk is reduced with its stamp."""
        self.stamp_sum: float | None = None

    def buffer(self, t: torch.Tensor) -> torch.Tensor:
        """The host view ``t`` is staged in (the stamp is the element after it)."""
        n = t.numel()
        if n + 1 > self.host.numel() or t.dtype != self.host.dtype:
            self.host = torch.empty(n + 1, dtype=t.dtype, pin_memory=self.pin)
        return self.host[:n].view(t.shape)

    def reduce(self, n: int, stamp: int) -> dist.Work:
        """All-reduce the buffer's first ``n`` elements with the stamp; sets `stamp_sum` (NaN when the pieces
        of a larger tensor disagree: a piece that lost a peer's part disagrees too). Returns the last piece's
        work."""
        per = self.piece_bytes // self.host.element_size() - 1
        if n <= per:
            self.host[n] = stamp
            work = self._all_reduce(self.host[: n + 1])
            self.stamp_sum = float(self.host[n])
            return work
        if self.piece.numel() < per + 1 or self.piece.dtype != self.host.dtype:
            self.piece = torch.empty(per + 1, dtype=self.host.dtype)
        sums: set[float] = set()
        for start in range(0, n, per):
            m = min(per, n - start)
            piece = self.piece[: m + 1]
            piece[:m] = self.host[start : start + m]
            piece[m] = stamp
            work = self._all_reduce(piece)
            self.host[start : start + m] = piece[:m]
            sums.add(float(piece[m]))
        self.stamp_sum = sums.pop() if len(sums) == 1 else float("nan")
        return work

    def _all_reduce(self, x: torch.Tensor) -> dist.Work:
        work: dist.Work | None = dist.all_reduce(x, group=self.group, async_op=True)
        assert work is not None
        work.wait()
        return work


class Agreement(Protocol):
    """The part of `agreement.StoreAgreement` the selection uses (raises as documented there)."""

    def barrier(self, key: str, parties: int) -> None: ...
    def vote(self, name: str, voters: list[int], vote: bool) -> bool: ...


class ModeStore(Protocol):
    """The part of the TCPStore where the chosen mode is published. `get` waits for the key up to the
    store's timeout and raises RuntimeError (torch's DistError family) past it or when the store is gone."""

    def set(self, key: str, value: str, /) -> None: ...
    def get(self, key: str, /) -> bytes: ...


class DevicePath:
    """Mooncake's device collectives on the device world group (no host sync)."""

    mode = DataPath.DEVICE

    def __init__(self, group: dist.ProcessGroup, backend: str) -> None:
        self.group = group
        self.route = f"device route (Mooncake's collectives on the {backend} world group)"
        self.on_host: StagedPath | None = None
        """On mooncake-cpu (host tensors) the op is the staged one (`StagedPath` on the CPU: a copy in and out
        of its stamped buffer, the same CPU collective)."""

    @property
    def stamp_sum(self) -> float | None:
        return self.on_host.stamp_sum if self.on_host is not None else None

    def all_reduce(self, t: torch.Tensor, stamp: int = 0) -> dist.Work:
        if t.device.type == "cpu":
            if self.on_host is None:
                self.on_host = StagedPath(self.group, t.device, numel=t.numel(), dtype=t.dtype)
            return self.on_host.all_reduce(t, stamp)
        work: dist.Work | None = dist.all_reduce(t, group=self.group, async_op=True)
        assert work is not None
        work.wait()
        return work


class StagedPath:
    """Each combine staged through one pinned host buffer and all-reduced on the CPU world group (module doc).

    The buffer (`Stamped`: the combine's ``numel`` elements of ``dtype`` and the stamp) grows if a larger
    tensor comes. One buffer is enough: the copy back to the device and the next copy out are ordered on the
    same stream, and the host collective writes the buffer only after the stream sync that follows the copy
    out."""

    mode = DataPath.STAGED

    def __init__(
        self, group: dist.ProcessGroup, device: torch.device, *, numel: int, dtype: torch.dtype
    ) -> None:
        self.group, self.device = group, device
        self.on_gpu = device.type == "cuda"
        self.stamped = Stamped(group, numel=numel, dtype=dtype, pin=self.on_gpu)
        self.route = "staged route (pinned host memory, the all-reduce on the mooncake-cpu world group)"
        self.host_syncs = 0
        """Host syncs so far (one per combine on GPU; none on CPU), for benchmarks."""

    @property
    def stamp_sum(self) -> float | None:
        return self.stamped.stamp_sum

    def all_reduce(self, t: torch.Tensor, stamp: int = 0) -> dist.Work:
        host = self.stamped.buffer(t)
        if self.on_gpu:
            host.copy_(t, non_blocking=True)
            # The host sync of this path, deliberately through the stream (not an event) so that
            # torch.cuda.set_sync_debug_mode counts it: the benchmark's per-step sync count must show it.
            torch.cuda.current_stream(self.device).synchronize()
            self.host_syncs += 1
        else:
            host.copy_(t)
        work = self.stamped.reduce(t.numel(), stamp)
        t.copy_(host, non_blocking=self.on_gpu)
        return work


# ---------------------------------------------------------------------------------------------- the probe


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where the group's ranks run, as far as `Auto` needs it."""

    hosts: int | None
    """Distinct nodes the ranks run on; None when some rank does not know its node."""
    rdma: bool
    """RDMA is configured between the members (`MemberEnv.rdma`)."""

    @property
    def device_route_known(self) -> bool:
        """The device route is one that holds under load: peer-to-peer on one host, or RDMA; also when the
        hosts are unknown (the probe then decides, as before the placement was known)."""
        return self.hosts is None or self.hosts <= 1 or self.rdma


UNKNOWN_PLACEMENT = Placement(hosts=None, rdma=False)


def probe_order(requested: DataPath, placement: Placement = UNKNOWN_PLACEMENT) -> tuple[DataPath, ...]:
    """The routes to probe, in order, for a requested mode; the first that every rank passes is used. Under
    `Auto`, members on several hosts without RDMA skip the device route: its host-proxy route passes a
    probe and then stalls under load (docs/known-issues.md, "Members on different hosts"). Pure."""
    if requested is DataPath.AUTO:
        if not placement.device_route_known:
            return (DataPath.STAGED,)
        return (DataPath.DEVICE, DataPath.STAGED)
    return (requested,)


NODE_KEY = "eep/node/"
"""TCPStore key prefix under which each rank of a fresh group publishes its node name (`placement`)."""


def placement(store: ModeStore, *, rank: int, world_size: int, node: str, rdma: bool) -> Placement:
    """Every rank's node, through the TCPStore: each publishes its own and reads the others' (the store's
    get waits for a key). Collective for the ranks of a fresh group. An empty `node` (unknown) makes the
    placement unknown. Raises what ``store`` raises (a rank that never publishes: the store's timeout)."""
    store.set(f"{NODE_KEY}{rank}", node)
    nodes = {bytes(store.get(f"{NODE_KEY}{r}")).decode() for r in range(world_size)}
    return Placement(hosts=None if "" in nodes else len(nodes), rdma=rdma)


def probe_sizes(combine_numel: int) -> tuple[int, ...]:
    """Elements per probe all-reduce: `SMALL_SIZES` below the combine's size, and the combine's size. Pure."""
    if combine_numel < 1:
        raise ValueError(f"combine size must be positive, got {combine_numel}")
    return tuple(sorted({min(s, combine_numel) for s in SMALL_SIZES} | {combine_numel}))


def pattern(rank: int, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """What ``rank`` contributes: ``(rank + 1) * (1 + i % 7)`` at element ``i``, float32."""
    steps = torch.arange(size, dtype=torch.int64, device=device) % PATTERN_PERIOD + 1
    return (steps * (rank + 1)).to(torch.float32)


def check_values(got: torch.Tensor, world_size: int) -> str | None:
    """None when ``got`` (on the host) is the exact all-reduce of `pattern` over ranks 0..world_size-1, else
    what is wrong. Exact in float32: at most 1024 x 1025 / 2 x 7 < 2**24."""
    total = world_size * (world_size + 1) // 2  # the sum of rank + 1 over the world
    steps = torch.arange(got.numel(), dtype=torch.int64) % PATTERN_PERIOD + 1
    want = (steps * total).to(torch.float32)
    flat = got.reshape(-1)
    if torch.equal(flat, want):
        return None
    bad = (flat != want).nonzero().reshape(-1)
    i = int(bad[0])
    return (
        f"{bad.numel()} of {flat.numel()} elements wrong (element {i}: {float(flat[i])}, "
        f"expected {float(want[i])})"
    )


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """One rank's probe of one route."""

    ok: bool
    detail: str
    """What was seen: the sizes and time when it passed; the first problem when not."""
    seconds: float
    pending: threading.Thread | None = None
    """The probe's thread when it outlived the bound (its collective may still be in flight), else None."""


def _read_back(x: torch.Tensor) -> torch.Tensor:
    if x.device.type == "cuda":
        # Nothing may be in flight when a pageable copy waits (docs/known-issues.md, H2): sync first.
        torch.cuda.current_stream(x.device).synchronize()
    return x.cpu()


def _ops(
    path: CombinePath,
    *,
    sizes: Sequence[int],
    rank: int,
    world_size: int,
    device: torch.device,
    success: Success,
) -> str | None:
    for size in sizes:
        for i in range(PROBE_REPEATS):
            x = pattern(rank, size, device)
            work = path.all_reduce(x)
            got = _read_back(x)
            wrong = check_values(got, world_size)
            reported = success(work)
            if wrong is not None or not reported:
                what = wrong if wrong is not None else "right values"
                how = (
                    "reported as a success" if reported else "Mooncake saw a peer fail (local_success False)"
                )
                return f"all-reduce of {size} elements (repeat {i}): {what}; {how}"
    return None


def probe(
    path: CombinePath,
    *,
    rank: int,
    world_size: int,
    sizes: Sequence[int],
    device: torch.device,
    success: Success,
    bound_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> ProbeResult:
    """This rank's probe of ``path`` (module doc): collective, every rank of the world calls it together with
    the same ``sizes``. Never raises: an exception, a wrong value, a failed work or the bound passing make a
    failed result. The collectives run on a helper thread (same device and stream as the caller's), so a
    hung route costs ``bound_s``, not the rank."""
    problems: list[str | None] = []
    stream = torch.cuda.current_stream(device) if device.type == "cuda" else None

    def body() -> None:
        try:
            if stream is not None:
                torch.cuda.set_device(device)
                with torch.cuda.stream(stream):
                    problems.append(
                        _ops(
                            path,
                            sizes=sizes,
                            rank=rank,
                            world_size=world_size,
                            device=device,
                            success=success,
                        )
                    )
            else:
                problems.append(
                    _ops(path, sizes=sizes, rank=rank, world_size=world_size, device=device, success=success)
                )
        except Exception as e:
            problems.append(f"{type(e).__name__}: {e}")

    t0 = clock()
    thread = threading.Thread(target=body, name=f"probe-{path.mode.value.lower()}", daemon=True)
    thread.start()
    thread.join(bound_s)
    seconds = clock() - t0
    if thread.is_alive():
        return ProbeResult(False, f"not finished within its bound of {bound_s:.1f}s", seconds, thread)
    problem = problems[0] if problems else "the probe thread ended without a verdict"
    if problem is not None:
        return ProbeResult(False, problem, seconds)
    ops = len(sizes) * PROBE_REPEATS
    return ProbeResult(True, f"{ops} all-reduces of {min(sizes)}..{max(sizes)} elements exact", seconds)


# ---------------------------------------------------------------------------------------------- selection


class NoDataPath(RuntimeError):
    """No route allowed by the requested mode passed its probe on every rank (the message names them)."""


@dataclasses.dataclass(frozen=True)
class Choice:
    """The path this rank serves with, and how it was chosen."""

    path: CombinePath
    requested: DataPath
    probes: tuple[tuple[DataPath, ProbeResult, bool], ...]
    """(route, this rank's result, whether every rank passed it), in probe order; empty for a joiner."""

    @property
    def mode(self) -> DataPath:
        return self.path.mode

    def describe(self) -> str:
        if not self.probes:
            return f"{self.mode.value}: {self.path.route}, the group's choice (joined)"
        seen = "; ".join(
            f"{m.value} {'passed' if agreed else 'failed'} ({r.detail}, {r.seconds:.3f}s here)"
            for m, r, agreed in self.probes
        )
        return f"{self.mode.value}: {self.path.route} (requested {self.requested.value}; {seen})"


def select(
    requested: DataPath,
    *,
    build: Mapping[DataPath, Callable[[], CombinePath]],
    rank: int,
    world_size: int,
    rejoin: bool,
    sizes: Sequence[int],
    device: torch.device,
    success: Success,
    agreement: Agreement,
    store: ModeStore,
    bound_s: float,
    drain_s: float,
    where: Placement = UNKNOWN_PLACEMENT,
) -> Choice:
    """Choose the path (module doc). Collective for the ranks of a fresh group (every rank calls it, with the
    same arguments but ``rank``); a joiner (``rejoin``) reads the group's choice from ``store`` instead.
    ``build`` makes each route's path (on demand: a staged path pins a buffer). Raises `NoDataPath` when no
    allowed route passes, ValueError on a mode in the store that is not a `DataPath`, and what ``agreement``
    and ``store`` raise (an absent rank, an unreachable store)."""
    if rejoin:
        mode = DataPath(bytes(store.get(MODE_KEY)).decode())
        return Choice(build[mode](), requested, ())
    voters = list(range(world_size))
    probes: list[tuple[DataPath, ProbeResult, bool]] = []
    routes: list[str] = []
    for mode in probe_order(requested, where):
        earlier = probes[-1][1] if probes else None
        if earlier is not None and earlier.pending is not None:
            # The staged copies would queue behind a device collective still on the stream: let it return.
            earlier.pending.join(drain_s)
        agreement.barrier(f"{MODE_KEY}/{mode.value}/start", world_size)
        if earlier is not None and earlier.pending is not None and earlier.pending.is_alive():
            # Still blocked: this rank cannot use the stream, but it votes, so every rank decides alike.
            path: CombinePath | None = None
            wait = f"the earlier probe's collective had not returned {drain_s:.0f}s after its bound"
            result = ProbeResult(False, f"not probed: {wait}", 0.0, earlier.pending)
        else:
            path = build[mode]()
            result = probe(
                path,
                rank=rank,
                world_size=world_size,
                sizes=sizes,
                device=device,
                success=success,
                bound_s=bound_s,
            )
        agreed = agreement.vote(f"data-path-{mode.value}", voters, result.ok)
        probes.append((mode, result, agreed))
        log.log(
            logging.INFO if agreed else logging.WARNING,
            "rank %d: data path %s probe %s here (%s, %.3fs); %s",
            rank,
            mode.value,
            "passed" if result.ok else "FAILED",
            result.detail,
            result.seconds,
            "every rank passed" if agreed else "not every rank passed: not used",
        )
        if agreed and path is not None:
            if rank == 0:
                store.set(MODE_KEY, mode.value)
            return Choice(path, requested, tuple(probes))
        route = path.route if path is not None else f"{mode.value.lower()} route"
        routes.append(
            f"{route}: " + (f"failed here: {result.detail}" if not result.ok else "failed on another rank")
        )
    skipped = (
        ""
        if where.device_route_known or requested is not DataPath.AUTO
        else (f" (the device route was not tried: the ranks run on {where.hosts} hosts without RDMA)")
    )
    raise NoDataPath(
        f"no data path passed its start-up probe (dataPath {requested.value}{skipped}): " + "; ".join(routes)
    )
