"""The rendered SGLang command lines, read by the argument parsers of two real releases, 0.5.20 and 0.5.23.

Every shape of spec below is rendered for a first start and for a replacement (`engine_command`, the same
function the pods get their command from), and each release's own `ServerArgs.add_cli_args` parser reads
the result in that release's cached environment (tests/operator/sglang_releases.py; built on the first run,
about a minute, then reused). 0.5.20 is the last release with `--elastic-ep-rejoin`, 0.5.23 the newest on
PyPI; `eep_contract.v1alpha1.SGLangReleases` has the whole table. Never skipped: `make test` runs it (marker
`sglang`; it needs torch from `make venv-worker`).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from sglang_releases import Parsed, environment, parse, torch_path

from eep_contract.v1alpha1 import ElasticEPClusterSpec, SGLangReleases
from eep_operator.core.podspec import engine_command

pytestmark = pytest.mark.sglang

RELEASES = SGLangReleases.TESTED
LAUNCH = ["python3", "-m", "sglang.launch_server"]

SHAPES: dict[str, dict[str, Any]] = {
    "2x8-ib": {
        "nodes": 2,
        "ranksPerNode": 8,
        "engine": {"sglang": {"extraArgs": ["--trust-remote-code"]}},
        "elasticEP": {"ibDevices": ["mlx5_0", "mlx5_1"]},
    },
    "4x1-sizes-port": {
        "nodes": 4,
        "ranksPerNode": 1,
        "engine": {
            "port": 31000,
            "args": ["--mem-fraction-static", "0.8"],
            "sglang": {"tpSize": 4, "epSize": 2},
        },
        "elasticEP": {"coordinatorPort": 5000},
    },
    "3x2-eplb-tcp": {
        "nodes": 3,
        "ranksPerNode": 2,
        "engine": {"sglang": {"extraArgs": ["--enable-eplb", "--ep-num-redundant-experts", "4"]}},
        "elasticEP": {"forceTCP": True},
    },
}
"""Specs of different sizes and options (name: spec fields besides image and model)."""


def spec_of(shape: str, release: str, join_flag: str = "Auto") -> ElasticEPClusterSpec:
    fields = SHAPES[shape]
    engine = dict(fields.get("engine", {}))
    sglang = {"modelPath": "deepseek-ai/DeepSeek-V3", "version": release, "joinFlag": join_flag}
    engine["sglang"] = {**sglang, **engine.get("sglang", {})}
    return ElasticEPClusterSpec.model_validate(
        {"image": f"lmsysorg/sglang:v{release}", **fields, "engine": {"name": "sglang", **engine}}
    )


@dataclass(frozen=True)
class Case:
    release: str
    shape: str
    join_flag: str
    member: int
    join: bool

    @property
    def id(self) -> str:
        start = "replacement" if self.join else "first-start"
        return f"{self.release}-{self.shape}-{self.join_flag}-member{self.member}-{start}"

    def spec(self) -> ElasticEPClusterSpec:
        return spec_of(self.shape, self.release, self.join_flag)

    def command(self) -> list[str]:
        return engine_command(self.spec(), "ds", "prod", self.member, join=self.join)


def _flags(release: str) -> list[str]:
    """The join flags the schema lets a spec of `release` use (all of them for 0.5.16-0.5.20)."""
    flags = ["Auto", "JoinModeRecover"]
    return [*flags, "Rejoin"] if release == "0.5.20" else flags


CASES = [
    Case(release, shape, flag, member, join)
    for release in RELEASES
    for shape, fields in SHAPES.items()
    for flag in _flags(release)
    for member, join in ((0, False), (fields["nodes"] - 1, False), (fields["nodes"] - 1, True))
    if flag == "Auto" or join  # the flag only changes a replacement's command line
]

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def example_commands() -> dict[str, list[list[str]]]:
    """The SGLang examples' command lines (member 0 first started, the last member a replacement) by
    release."""
    out: dict[str, list[list[str]]] = {}
    for path in EXAMPLES:
        doc = yaml.safe_load(path.read_text())
        spec = ElasticEPClusterSpec.model_validate(doc["spec"])
        if spec.engine.sglang is None:
            continue
        name, release = doc["metadata"]["name"], spec.engine.sglang.version
        for member, join in ((0, False), (spec.nodes - 1, True)):
            out.setdefault(release, []).append(engine_command(spec, name, "prod", member, join=join))
    return out


OLD_REJOIN = spec_of("2x8-ib", "0.5.20", "Rejoin")
"""What the operator rendered for a replacement before the release was part of the spec, with `Rejoin`."""


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, tuple[str, ...]], Parsed]]:
    """SGLang's verdict on every command line of CASES (and the old `Rejoin` one), per release: one
    subprocess per release."""
    torch_dir = torch_path(tmp_path_factory.mktemp("torch"))
    old = tuple(engine_command(OLD_REJOIN, "ds", "prod", 1, join=True)[3:])
    envs = {release: environment(release).path for release in RELEASES}  # built one at a time

    def run(release: str) -> dict[tuple[str, tuple[str, ...]], Parsed]:
        examples = {tuple(cmd[3:]) for cmd in example_commands().get(release, [])}
        argvs = sorted({tuple(c.command()[3:]) for c in CASES if c.release == release} | {old} | examples)
        version, results = parse(envs[release], torch_dir, argvs)
        assert version == release, f"the environment of {release} imports sglang {version}"
        return {(release, argv): result for argv, result in zip(argvs, results, strict=True)}

    with ThreadPoolExecutor(len(RELEASES)) as pool:  # each waits 10-30 s for its imports
        found = [d for d in pool.map(run, RELEASES)]
    yield {k: v for d in found for k, v in d.items()}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_the_release_parses_what_the_operator_renders(
    case: Case, verdicts: dict[tuple[str, tuple[str, ...]], Parsed]
) -> None:
    cmd = case.command()
    assert cmd[:3] == LAUNCH
    got = verdicts[(case.release, tuple(cmd[3:]))]
    assert got.ok, f"sglang {case.release} rejects {cmd[3:]}: {got.error}"
    spec, args = case.spec(), got.args
    sg = spec.engine.sglang
    assert sg is not None
    world = spec.world_size
    assert (args["model_path"], args["tp_size"], args["ep_size"]) == (
        "deepseek-ai/DeepSeek-V3",
        sg.tp_size or world,
        sg.ep_size or world,
    )
    assert (args["nnodes"], args["node_rank"]) == (spec.nodes, case.member)
    port = spec.elastic_ep.coordinator_port
    assert args["dist_init_addr"] == f"ds-0.ds.prod.svc.cluster.local:{port}"
    assert args["elastic_ep_backend"] == "mooncake"
    assert args["mooncake_ib_device"] == (",".join(spec.elastic_ep.ib_devices) or None)
    assert (args["host"], args["port"]) == ("0.0.0.0", spec.engine.port)
    rejoin = case.join and case.join_flag == "Rejoin"
    assert args["ep_join_mode"] == ("recover" if case.join and not rejoin else None)
    if case.release == "0.5.20":
        assert args["elastic_ep_rejoin"] is rejoin
    else:
        assert "elastic_ep_rejoin" not in args
    extra = [*sg.extra_args, *spec.engine.args]
    if extra:
        assert cmd[-len(extra) :] == extra
    if "--trust-remote-code" in extra:
        assert args["trust_remote_code"] is True
    if "--enable-eplb" in extra:
        assert (args["enable_eplb"], args["ep_num_redundant_experts"]) == (True, 4)


def test_releases_after_0_5_20_reject_the_rejoin_flag_and_so_does_the_schema(
    verdicts: dict[tuple[str, tuple[str, ...]], Parsed],
) -> None:
    """The fault the release field fixes: `--elastic-ep-rejoin` is an argparse error from 0.5.21 on."""
    old = tuple(engine_command(OLD_REJOIN, "ds", "prod", 1, join=True)[3:])
    assert "--elastic-ep-rejoin" in old
    assert verdicts[("0.5.20", old)].ok
    newest = verdicts[("0.5.23", old)]
    assert not newest.ok and "unrecognized arguments: --elastic-ep-rejoin" in newest.error
    with pytest.raises(ValidationError, match=r"joinFlag Rejoin \(--elastic-ep-rejoin\) is accepted by"):
        spec_of("2x8-ib", "0.5.23", "Rejoin")


def test_the_examples_run_a_release_that_accepts_their_command_lines(
    verdicts: dict[tuple[str, tuple[str, ...]], Parsed],
) -> None:
    """examples/gpu-sglang-*.yaml: the image is the release `engine.sglang.version` names, that release is one
    tested here, and its parser accepts the first start's and a replacement's command lines."""
    commands = example_commands()
    assert commands, "no SGLang example"
    for path in EXAMPLES:
        doc = yaml.safe_load(path.read_text())
        sglang = doc["spec"].get("engine", {}).get("sglang")
        if sglang is not None:
            assert f":v{sglang['version']}-" in doc["spec"]["image"], f"{path.name}: image and release differ"
    for release, cmds in commands.items():
        assert release in RELEASES, f"the examples name {release}, which this test does not parse"
        for cmd in cmds:
            got = verdicts[(release, tuple(cmd[3:]))]
            assert got.ok, f"sglang {release} rejects {cmd[3:]}: {got.error}"
