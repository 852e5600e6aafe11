"""datapath.py with real collectives: 2 rank processes on torch's gloo backend, a real TCPStore for the vote.

Both paths run for real (on CPU the staged path is a copy and the same collective): the probe passes, `Auto`
chooses the device route and `Staged` the staged one on every rank, and a combine gives the same numbers
through either path, a non-contiguous tensor and one larger than the staging buffer included, and each
rank's stamp of the op is summed beside the data (in every piece of a tensor larger than a Mooncake
chunk). (Mooncake's own backends run the same code in `test_datapath_mooncake.py`.)
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
mp = pytest.importorskip("torch.multiprocessing")

from eep_contract.env import DataPath  # noqa: E402
from eep_worker import datapath as D  # noqa: E402
from eep_worker.agreement import StoreAgreement  # noqa: E402

WORLD = 2
ROWS, HIDDEN = 8, 16


def _rank_main(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    timeout = datetime.timedelta(seconds=60)
    store = dist.TCPStore("127.0.0.1", port, WORLD + 1, False, timeout=timeout)
    dist.init_process_group(
        "gloo", store=dist.PrefixStore("pg/", store), rank=rank, world_size=WORLD, timeout=timeout
    )
    try:
        group = dist.group.WORLD
        cpu = torch.device("cpu")
        build = {
            DataPath.DEVICE: lambda: D.DevicePath(group, "gloo"),
            DataPath.STAGED: lambda: D.StagedPath(group, cpu, numel=ROWS * HIDDEN, dtype=torch.float32),
        }
        modes = {}
        paths = {}
        for requested in (DataPath.AUTO, DataPath.STAGED):
            choice = D.select(
                requested,
                build=build,
                rank=rank,
                world_size=WORLD,
                rejoin=False,
                sizes=D.probe_sizes(ROWS * HIDDEN),
                device=cpu,
                success=lambda work: True,  # gloo has no local_success; the values are checked all the same
                agreement=StoreAgreement(store, rank, 30.0),
                store=store,
                bound_s=30.0,
                drain_s=30.0,
            )
            modes[requested.value] = choice.mode.value
            paths[choice.mode] = choice.path
        gen = torch.Generator().manual_seed(rank)
        sums = {}
        for mode, path in paths.items():
            x = torch.randn(ROWS, HIDDEN, generator=torch.Generator().manual_seed(rank))
            path.all_reduce(x)
            wide = torch.randn(HIDDEN, 4 * ROWS, generator=gen).T  # non-contiguous, larger than the buffer
            wide_sum = wide.clone()
            path.all_reduce(wide)
            dist.all_reduce(wide_sum)
            path.all_reduce(torch.zeros(ROWS, HIDDEN), 3)  # each rank's stamp of the op: 3
            small = path.stamp_sum
            staged = path.on_host if isinstance(path, D.DevicePath) else path  # host tensors: staged alike
            assert isinstance(staged, D.StagedPath)
            stamped = staged.stamped
            assert stamped.piece_bytes == D.piece_bytes(WORLD)
            stamped.piece_bytes = 4096  # as on a large group: a tensor of 1024 floats or more is split
            big = torch.arange(2 * 1024 + 5, dtype=torch.float32)  # in 3 stamped pieces
            path.all_reduce(big, 2)
            big_ok = torch.equal(big, WORLD * torch.arange(big.numel(), dtype=torch.float32))
            sums[mode.value] = [x.tolist(), torch.equal(wide, wide_sum), small, path.stamp_sum, big_ok]
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"modes": modes, "sums": sums}))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_both_paths_serve_the_same_sums_across_real_processes(tmp_path: Path) -> None:
    master = dist.TCPStore(
        "127.0.0.1", 0, WORLD + 1, True, timeout=datetime.timedelta(seconds=60), wait_for_workers=False
    )
    mp.spawn(_rank_main, args=(int(master.port), str(tmp_path)), nprocs=WORLD, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    expected = sum(
        torch.randn(ROWS, HIDDEN, generator=torch.Generator().manual_seed(r)) for r in range(WORLD)
    )
    for r in results:
        assert r["modes"] == {"Auto": "Device", "Staged": "Staged"}
        for mode in ("Device", "Staged"):
            values, wide_ok, stamp_sum, big_stamp_sum, big_ok = r["sums"][mode]
            assert torch.allclose(torch.tensor(values), expected), mode
            assert wide_ok and big_ok, mode
            assert stamp_sum == 3 * WORLD, mode  # the stamps travel beside the data (`Stamped`)
            assert big_stamp_sum == 2 * WORLD, mode  # every piece's stamp summed alike
    assert results[0]["sums"]["Device"][0] == results[0]["sums"]["Staged"][0]
    assert bytes(master.get(D.MODE_KEY)) == b"Staged"  # rank 0 published the (last) choice for joiners
