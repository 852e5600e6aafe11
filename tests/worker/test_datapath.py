"""datapath.py: the probe checks values, and a route that returned a wrong sum is never served.

The probe's collective is a fake here (a wrong sum cannot be produced on purpose with a real CPU collective):
each fake `CombinePath` writes what a route would leave in the tensor (the exact sum, or the rank's own value
as the host-proxy route did on H200s) and a work whose `local_success` the test chooses. The vote is the real
one (`agreement.StoreAgreement` on a real TCPStore), the ranks threads, so "every rank picks the same path"
is tested as it runs. `test_datapath_gloo.py` runs the real paths over real processes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

from eep_contract.env import DataPath  # noqa: E402
from eep_worker import datapath as D  # noqa: E402
from eep_worker.agreement import StoreAgreement  # noqa: E402

CPU = torch.device("cpu")
SIZES = (16, 100)


class Work:
    def __init__(self, ok: bool) -> None:
        self.ok = ok


def success(work: Work) -> bool:
    return work.ok


class FakePath:
    """A route as one rank sees it: `result(t, rank)` is what the collective leaves in ``t``."""

    def __init__(
        self,
        mode: DataPath,
        rank: int,
        world: int,
        *,
        values: str = "right",
        reported: bool = True,
        hang: threading.Event | None = None,
    ) -> None:
        self.mode, self.rank, self.world = mode, rank, world
        self.values, self.reported, self.hang = values, reported, hang
        self.route = f"fake {mode.value.lower()} route"
        self.calls = 0

    def all_reduce(self, t: torch.Tensor) -> Any:
        self.calls += 1
        if self.hang is not None:
            self.hang.wait()
        if self.values == "raise":
            raise RuntimeError("transport closed")
        if self.values == "right":
            t.mul_(self.world * (self.world + 1) // 2).div_(self.rank + 1)
        elif self.values == "one-element":
            t.mul_(self.world * (self.world + 1) // 2).div_(self.rank + 1)
            t[-1] += 1
        # "own": the rank's own contribution stays (the host-proxy run: rank 0 read 1.0 instead of 3.0)
        return Work(self.reported)


# ------------------------------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("requested", "order"),
    [
        (DataPath.AUTO, (DataPath.DEVICE, DataPath.STAGED)),
        (DataPath.DEVICE, (DataPath.DEVICE,)),
        (DataPath.STAGED, (DataPath.STAGED,)),
    ],
)
def test_probe_order(requested: DataPath, order: tuple[DataPath, ...]) -> None:
    assert D.probe_order(requested) == order


@pytest.mark.parametrize(
    ("numel", "sizes"),
    [(4096, (16, 4096)), (100, (16, 100)), (8, (8,)), (64 * 1024, (16, 4096, 64 * 1024))],
)
def test_probe_sizes_go_up_to_the_combine(numel: int, sizes: tuple[int, ...]) -> None:
    assert D.probe_sizes(numel) == sizes


@pytest.mark.parametrize("world", [1, 2, 3, 8, 1024])
def test_the_exact_sum_passes_and_is_exact_in_float32(world: int) -> None:
    total = torch.zeros(50)
    for r in range(world):  # a ring all-reduce adds in float32 too: every partial sum is an integer < 2**24
        total += D.pattern(r, 50)
    assert D.check_values(total, world) is None


def test_a_wrong_sum_is_named() -> None:
    own = D.pattern(0, 16)  # what rank 0 read on the host-proxy route: its own value
    problem = D.check_values(own, 2)
    assert problem is not None and "16 of 16 elements wrong (element 0: 1.0, expected 3.0)" in problem
    one_off = D.pattern(0, 16) * 3
    one_off[9] += 1
    assert "1 of 16 elements wrong (element 9" in str(D.check_values(one_off, 2))


# ------------------------------------------------------------------------------------------- one rank's probe


def _probe(path: FakePath, bound_s: float = 10.0) -> D.ProbeResult:
    return D.probe(
        path, rank=path.rank, world_size=path.world, sizes=SIZES, device=CPU, success=success, bound_s=bound_s
    )


def test_a_right_route_passes_every_size_twice() -> None:
    path = FakePath(DataPath.DEVICE, 1, 3)
    result = _probe(path)
    assert result.ok, result.detail
    assert path.calls == len(SIZES) * D.PROBE_REPEATS


@pytest.mark.parametrize(
    ("values", "reported", "expect"),
    [
        ("own", True, "elements wrong (element 0: 1.0, expected 3.0); reported as a success"),
        ("own", False, "local_success False"),
        ("one-element", True, "1 of 16 elements wrong"),
        ("right", False, "right values; Mooncake saw a peer fail (local_success False)"),
        ("raise", True, "RuntimeError: transport closed"),
    ],
)
def test_a_wrong_or_failed_route_fails_the_probe(values: str, reported: bool, expect: str) -> None:
    result = _probe(FakePath(DataPath.DEVICE, 0, 2, values=values, reported=reported))
    assert not result.ok
    assert expect in result.detail
    assert result.pending is None


def test_a_hung_route_fails_at_its_bound_and_leaves_its_thread() -> None:
    release = threading.Event()
    result = _probe(FakePath(DataPath.DEVICE, 0, 2, hang=release), bound_s=0.2)
    assert not result.ok and "not finished within its bound of 0.2s" in result.detail
    assert result.pending is not None and result.pending.is_alive()
    release.set()
    result.pending.join(5)
    assert not result.pending.is_alive()


# ------------------------------------------------------------------------------------------------- every rank


@pytest.fixture
def store_port() -> Iterator[int]:
    master = dist.TCPStore("127.0.0.1", 0, 1, True, timeout=timedelta(seconds=10), wait_for_workers=False)
    yield int(master.port)
    del master


Routes = Callable[[DataPath, int], FakePath]


def _select_on_threads(
    port: int,
    world: int,
    requested: DataPath,
    routes: Routes,
    *,
    rejoin: bool = False,
    bound_s: float = 10.0,
    drain_s: float = 10.0,
    ranks: list[int] | None = None,
    nodes: list[str] | None = None,
    rdma: bool = False,
) -> dict[int, Any]:
    """`select` on every rank (threads, each with its own store client, as rank processes have); each rank's
    Choice, or the exception it raised."""
    results: dict[int, Any] = {}

    def run(rank: int) -> None:
        client = dist.TCPStore("127.0.0.1", port, 1, False, timeout=timedelta(seconds=10))
        build = {mode: (lambda mode=mode: routes(mode, rank)) for mode in (DataPath.DEVICE, DataPath.STAGED)}
        try:
            where = D.UNKNOWN_PLACEMENT
            if nodes is not None:
                where = D.placement(client, rank=rank, world_size=world, node=nodes[rank], rdma=rdma)
            results[rank] = D.select(
                requested,
                build=build,
                rank=rank,
                world_size=world,
                rejoin=rejoin,
                sizes=SIZES,
                device=CPU,
                success=success,
                agreement=StoreAgreement(client, rank, 20.0),
                store=client,
                bound_s=bound_s,
                drain_s=drain_s,
                where=where,
            )
        except Exception as e:
            results[rank] = e

    threads = [threading.Thread(target=run, args=(r,)) for r in (ranks or range(world))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def _modes(results: dict[int, Any]) -> dict[int, Any]:
    return {r: (c.mode if isinstance(c, D.Choice) else type(c).__name__) for r, c in results.items()}


def test_auto_serves_on_the_device_route_when_every_rank_passes(store_port: int) -> None:
    results = _select_on_threads(store_port, 3, DataPath.AUTO, lambda mode, r: FakePath(mode, r, 3))
    assert _modes(results) == {0: DataPath.DEVICE, 1: DataPath.DEVICE, 2: DataPath.DEVICE}
    assert "Device passed" in results[0].describe()


def test_auto_falls_back_on_every_rank_when_one_rank_reads_a_wrong_sum(store_port: int) -> None:
    """The measured host-proxy failure, reported as a success on rank 1 only: every rank serves staged."""

    def routes(mode: DataPath, rank: int) -> FakePath:
        wrong = mode is DataPath.DEVICE and rank == 1
        return FakePath(mode, rank, 3, values="own" if wrong else "right")

    results = _select_on_threads(store_port, 3, DataPath.AUTO, routes)
    assert _modes(results) == {0: DataPath.STAGED, 1: DataPath.STAGED, 2: DataPath.STAGED}
    for rank, choice in results.items():
        (device_mode, device_here, device_agreed), (staged_mode, _, staged_agreed) = choice.probes
        assert (device_mode, device_agreed, staged_mode, staged_agreed) == (
            DataPath.DEVICE,
            False,
            DataPath.STAGED,
            True,
        )
        assert device_here.ok is (rank != 1)
    assert "reported as a success" in results[1].probes[0][1].detail


def test_device_forced_never_serves_a_wrong_sum(store_port: int) -> None:
    def routes(mode: DataPath, rank: int) -> FakePath:
        assert mode is DataPath.DEVICE, "Device forced must not try another route"
        return FakePath(mode, rank, 2, values="own" if rank == 0 else "right")

    results = _select_on_threads(store_port, 2, DataPath.DEVICE, routes)
    assert _modes(results) == {0: "NoDataPath", 1: "NoDataPath"}
    assert "fake device route: failed here: all-reduce of 16 elements (repeat 0)" in str(results[0])
    assert "fake device route: failed on another rank" in str(results[1])
    assert "dataPath Device" in str(results[1])


def test_staged_forced_never_touches_the_device_route(store_port: int) -> None:
    def routes(mode: DataPath, rank: int) -> FakePath:
        assert mode is DataPath.STAGED
        return FakePath(mode, rank, 2)

    results = _select_on_threads(store_port, 2, DataPath.STAGED, routes)
    assert _modes(results) == {0: DataPath.STAGED, 1: DataPath.STAGED}


def test_no_route_left_names_both(store_port: int) -> None:
    def routes(mode: DataPath, rank: int) -> FakePath:
        return FakePath(mode, rank, 2, values="own", reported=mode is DataPath.STAGED)

    results = _select_on_threads(store_port, 2, DataPath.AUTO, routes)
    assert _modes(results) == {0: "NoDataPath", 1: "NoDataPath"}
    message = str(results[0])
    assert "fake device route: failed here" in message and "fake staged route: failed here" in message


def test_a_hung_device_probe_is_drained_before_the_staged_probe(store_port: int) -> None:
    release = threading.Event()
    paths: dict[tuple[DataPath, int], FakePath] = {}

    def routes(mode: DataPath, rank: int) -> FakePath:
        hang = release if (mode is DataPath.DEVICE and rank == 1) else None
        paths[mode, rank] = FakePath(mode, rank, 2, hang=hang)
        return paths[mode, rank]

    threading.Timer(1.0, release.set).start()  # Mooncake releases the failed collective later
    results = _select_on_threads(store_port, 2, DataPath.AUTO, routes, bound_s=0.3, drain_s=10.0)
    assert _modes(results) == {0: DataPath.STAGED, 1: DataPath.STAGED}
    assert "not finished within its bound" in results[1].probes[0][1].detail


def test_a_device_probe_that_never_returns_ends_the_selection(store_port: int) -> None:
    release = threading.Event()

    def routes(mode: DataPath, rank: int) -> FakePath:
        return FakePath(mode, rank, 2, hang=release if mode is DataPath.DEVICE and rank == 0 else None)

    try:
        results = _select_on_threads(store_port, 2, DataPath.AUTO, routes, bound_s=0.2, drain_s=0.3)
    finally:
        release.set()
    # Rank 0 cannot probe the staged route (its stream is blocked) but still votes: every rank ends alike.
    assert _modes(results) == {0: "NoDataPath", 1: "NoDataPath"}
    assert "staged route: failed here: not probed: the earlier probe's collective had not returned" in str(
        results[0]
    )
    assert "fake staged route: failed on another rank" in str(results[1])


def test_a_joiner_takes_the_groups_choice_from_the_store(store_port: int) -> None:
    def routes(mode: DataPath, rank: int) -> FakePath:
        return FakePath(mode, rank, 2, values="own" if mode is DataPath.DEVICE else "right")

    assert _modes(_select_on_threads(store_port, 2, DataPath.AUTO, routes)) == {
        0: DataPath.STAGED,
        1: DataPath.STAGED,
    }
    built: list[DataPath] = []

    def joiner_routes(mode: DataPath, rank: int) -> FakePath:
        built.append(mode)
        return FakePath(mode, rank, 2)

    joined = _select_on_threads(store_port, 2, DataPath.AUTO, joiner_routes, rejoin=True, ranks=[1])
    assert _modes(joined) == {1: DataPath.STAGED}
    assert built == [DataPath.STAGED] and joined[1].probes == ()
    assert "the group's choice (joined)" in joined[1].describe()


@pytest.mark.parametrize(
    ("nodes", "rdma", "expected"),
    [
        (["n0", "n0", "n0"], False, DataPath.DEVICE),  # one host: peer-to-peer
        (["n0", "n1", "n1"], True, DataPath.DEVICE),  # hosts with RDMA
        (["n0", "n1", "n1"], False, DataPath.STAGED),  # hosts without RDMA: never the host-proxy route
        (["n0", "", "n1"], False, DataPath.DEVICE),  # a rank that does not know its node: probe as before
    ],
)
def test_auto_uses_the_device_route_only_where_it_holds(
    store_port: int, nodes: list[str], rdma: bool, expected: DataPath
) -> None:
    """Issue #17: under `Auto` the host-proxy device route (members on different hosts, no RDMA) passed the
    start-up probe and then stalled under load on 2 H200s (bench/README.md, "Auto" row). Before the fix the
    third case chose `Device` (`assert {0: <DataPath.DEVICE...>} == {0: <DataPath.STAGED...>}`)."""
    tried: list[DataPath] = []

    def routes(mode: DataPath, rank: int) -> FakePath:
        tried.append(mode)
        return FakePath(mode, rank, 3)

    results = _select_on_threads(store_port, 3, DataPath.AUTO, routes, nodes=nodes, rdma=rdma)
    assert _modes(results) == dict.fromkeys(range(3), expected)
    if expected is DataPath.STAGED:
        assert DataPath.DEVICE not in tried  # not even probed


def test_auto_without_a_route_says_the_device_route_was_skipped(store_port: int) -> None:
    results = _select_on_threads(
        store_port,
        2,
        DataPath.AUTO,
        lambda mode, r: FakePath(mode, r, 2, values="own", reported=True),
        nodes=["n0", "n1"],
    )
    assert "not tried: the ranks run on 2 hosts without RDMA" in str(results[0])


@pytest.mark.parametrize(
    ("hosts", "rdma", "order"),
    [
        (None, False, (DataPath.DEVICE, DataPath.STAGED)),
        (1, False, (DataPath.DEVICE, DataPath.STAGED)),
        (2, False, (DataPath.STAGED,)),
        (2, True, (DataPath.DEVICE, DataPath.STAGED)),
    ],
)
def test_probe_order_by_placement(hosts: int | None, rdma: bool, order: tuple[DataPath, ...]) -> None:
    assert D.probe_order(DataPath.AUTO, D.Placement(hosts, rdma)) == order
    assert D.probe_order(DataPath.DEVICE, D.Placement(hosts, rdma)) == (DataPath.DEVICE,)
