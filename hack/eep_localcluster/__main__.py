"""`eep-localcluster --state DIR up|down|status|env|node|start-node|stop-node`: the CLI over the control plane
and the process-node agents. The only module that reads the environment (EEP_CACHE, HOME, PATH).

    up [--nodes N] [--gpus G] [--fake]   start (or reuse) the control plane and N agents eep-node-0..N-1
    down                                 stop agents (and their pods), the control plane, then sweep /proc
    status                               components, agents and Nodes
    env                                  shell exports: KUBECONFIG and PATH with our kubectl/helm first
    node --name X                        run one agent in the foreground (what `up` starts detached)
    start-node X / stop-node X           start or stop one agent (stop = a lost node to the cluster)
    kueue up|down|status                 Kueue on the running control plane (`make kueue` builds it)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config

from eep_localcluster import controlplane, ipam, kueue, pki, procs
from eep_localcluster.kubeconfig import write_kubeconfig
from eep_localcluster.layout import COMPONENTS, Layout
from eep_localcluster.processnode import Agent
from eep_localcluster.settings import AgentSettings

HACK = Path(__file__).resolve().parent.parent


def _versions() -> dict[str, str]:
    out = {}
    for line in (HACK / "versions.env").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def _cache() -> Path:
    return Path(os.environ.get("EEP_CACHE") or Path.home() / ".cache" / "elastic-ep-operator")


def default_bin_dir() -> Path:
    v = _versions()
    return _cache() / "control-plane" / f"{v['KUBE_VERSION']}-etcd-{v['ETCD_VERSION']}" / "bin"


def default_kueue_home() -> Path:
    """hack/build-kueue.sh's output: bin/kueue, crds/, webhook/."""
    return _cache() / "kueue" / _versions()["KUEUE_VERSION"]


def tools_bin_dir() -> Path:
    return _cache() / "tools" / _versions()["KUBECTL_LAYER_VERSION"] / "bin"


def _say(msg: str) -> None:
    print(f"{datetime.now(UTC).strftime('%H:%M:%S.%f')[:-3]} {msg}", flush=True)


def _node_names(layout: Layout) -> list[str]:
    return sorted(p.name for p in layout.nodes.iterdir()) if layout.nodes.exists() else []


def _self_argv(layout: Layout, *args: str) -> list[str]:
    """This CLI, run by this interpreter on `layout`'s state directory, with `args` after `--state`."""
    return [sys.executable, "-m", "eep_localcluster", "--state", str(layout.root), *args]


def _start_agent(layout: Layout, name: str, args: list[str]) -> None:
    node = layout.node(name)
    node.root.mkdir(parents=True, exist_ok=True)
    (node.root / "args.json").write_text(json.dumps(args))
    if procs.alive(node.pid, layout.root):
        return
    pair = pki.ensure_client_cert(layout.pki, f"agent-{name}", f"eep-agent:{name}", ("system:masters",))
    info = controlplane.ClusterInfo.load(layout.cluster_json)
    assert info is not None
    write_kubeconfig(node.kubeconfig, info.server, layout.pki.ca.cert, pair, f"eep-agent:{name}")
    argv = _self_argv(layout, "node", "--name", name, *args)
    procs.spawn_detached(argv, log=node.log, pid_file=node.pid, state=layout.root)


def _stop_agent(layout: Layout, name: str) -> None:
    # Not as a group: the agent's SIGTERM handler stops its pods; a group kill would skip that.
    procs.stop(layout.node(name).pid, layout.root, grace_s=10.0, group=False)


def _wait_nodes_ready(layout: Layout, names: list[str], timeout_s: float) -> None:
    api = config.new_client_from_config(config_file=str(layout.kubeconfig))  # type: ignore[no-untyped-call]
    core: Any = client.CoreV1Api(api)  # raw JSON reads
    deadline = time.monotonic() + timeout_s
    pending = set(names)
    while pending and time.monotonic() < deadline:
        for name in list(pending):
            try:
                node = json.loads(core.read_node(name, _preload_content=False).data)
            except Exception:
                continue
            conds = node.get("status", {}).get("conditions", [])
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
                pending.discard(name)
        time.sleep(0.3)
    if pending:
        tails = {n: layout.node(n).log.read_text(errors="replace")[-2000:] for n in pending}
        raise SystemExit(f"nodes not Ready after {timeout_s}s: {sorted(pending)}\n{tails}")


def cmd_up(a: argparse.Namespace, layout: Layout) -> int:
    layout.root.mkdir(parents=True, exist_ok=True)
    info = controlplane.healthy(layout)
    if info is None:
        _say("starting control plane")
        cmd_down(a, layout, quiet=True)
        settings = controlplane.ControlPlaneSettings(
            bin_dir=Path(a.bin_dir) if a.bin_dir else default_bin_dir(),
            node_monitor_grace_s=a.node_monitor_grace,
        )
        try:
            info = controlplane.start(layout, settings)
        except controlplane.StartError as e:
            print(f"control plane failed: {e}", file=sys.stderr)
            cmd_down(a, layout, quiet=True)
            return 1
        _say(f"control plane ready at {info.server}")
    else:
        _say(f"reusing control plane at {info.server}")
    agent_args = [
        "--gpus",
        str(a.gpus),
        "--max-pods",
        str(a.max_pods),
        "--venv-bin",
        a.venv_bin or str(Path(sys.executable).parent),
    ]
    if a.fake:
        agent_args.append("--fake")
    names = [f"eep-node-{i}" for i in range(a.nodes)]
    for name in names:
        _start_agent(layout, name, agent_args)
    _wait_nodes_ready(layout, names, 60)
    if a.exit_with:
        # A watchdog runs `down` once the owner (a test session) is gone, even if it was SIGKILLed.
        argv = _self_argv(layout, "watch", str(a.exit_with))
        procs.spawn_detached(argv, log=layout.log("watch"), pid_file=layout.pid("watch"), state=layout.root)
    _say(f"{len(names)} node(s) Ready; KUBECONFIG={layout.kubeconfig}")
    return 0


def cmd_down(a: argparse.Namespace, layout: Layout, quiet: bool = False) -> int:
    for name in _node_names(layout):
        _stop_agent(layout, name)
    controlplane.stop(layout)
    killed = procs.sweep(layout.root)
    ipam.release_all(layout.ips)
    shutil.rmtree(layout.ips, ignore_errors=True)
    if not quiet:
        _say(f"stopped (swept {len(killed)} leftover process(es))")
    return 0


def cmd_status(a: argparse.Namespace, layout: Layout) -> int:
    info = controlplane.healthy(layout)
    for comp in COMPONENTS:
        print(f"{comp:26} {'running' if procs.alive(layout.pid(comp), layout.root) else 'stopped'}")
    for name in _node_names(layout):
        print(
            f"agent {name:20} {'running' if procs.alive(layout.node(name).pid, layout.root) else 'stopped'}"
        )
    print(f"apiserver {'ready at ' + info.server if info else 'not ready'}")
    return 0 if info else 1


def cmd_env(a: argparse.Namespace, layout: Layout) -> int:
    print(f"export KUBECONFIG={layout.kubeconfig}")
    print(f'export PATH={tools_bin_dir()}:"$PATH"')
    return 0


def cmd_node(a: argparse.Namespace, layout: Layout) -> int:
    info = controlplane.ClusterInfo.load(layout.cluster_json)
    if info is None:
        print("no cluster in this state directory", file=sys.stderr)
        return 1
    node = layout.node(a.name)
    inherit = {
        k: os.environ[k] for k in ("LD_LIBRARY_PATH", "CUDA_HOME", "TMPDIR", "LANG") if k in os.environ
    }
    settings = AgentSettings(
        name=a.name,
        state=layout.root,
        node_dir=node.root,
        ips_dir=layout.ips,
        apiserver_port=info.apiserver_port,
        ca_cert=layout.pki.ca.cert,
        venv_bin=Path(a.venv_bin or Path(sys.executable).parent),
        host_path=os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        inherit_env=inherit,
        gpus=a.gpus,
        max_pods=a.max_pods,
        fake=a.fake,
        taints=tuple(a.taint),
        kube_version=_versions()["KUBE_VERSION"],
    )
    kubeconfig = node.kubeconfig if node.kubeconfig.exists() else layout.kubeconfig
    api = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    agent = Agent(settings, api, _say)
    signal.signal(signal.SIGTERM, lambda *_: agent.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: agent.stopping.set())
    agent.run()
    _say("agent stopped")
    return 0


def cmd_watch(a: argparse.Namespace, layout: Layout) -> int:
    while Path(f"/proc/{a.pid}").exists():
        time.sleep(1.0)
    _say(f"owner {a.pid} is gone: stopping the cluster")
    return cmd_down(a, layout)


def cmd_start_node(a: argparse.Namespace, layout: Layout) -> int:
    args_file = layout.node(a.name).root / "args.json"
    args = list(a.agent_args)
    if not args and args_file.exists():
        args = json.loads(args_file.read_text())
    _start_agent(layout, a.name, args)
    _wait_nodes_ready(layout, [a.name], 60)
    return 0


def cmd_kueue(a: argparse.Namespace, layout: Layout) -> int:
    if a.action == "down":
        kueue.stop(layout)
        _say("kueue stopped")
        return 0
    if a.action == "status":
        info = kueue.running(layout)
        print(f"kueue {'ready, webhook on 127.0.0.1:' + str(info.webhook_port) if info else 'not running'}")
        return 0 if info else 1
    if controlplane.healthy(layout) is None:
        print("no healthy control plane in this state directory: run `up` first", file=sys.stderr)
        return 1
    home = Path(a.home) if a.home else default_kueue_home()
    try:
        info = kueue.start(layout, kueue.KueueSettings(home=home))
    except kueue.KueueError as e:
        print(f"kueue failed: {e}", file=sys.stderr)
        return 1
    selector = f"{kueue.MANAGED_LABEL}={kueue.MANAGED_VALUE}"
    _say(f"kueue ready (webhook 127.0.0.1:{info.webhook_port}); it manages namespaces labelled {selector}")
    return 0


def cmd_stop_node(a: argparse.Namespace, layout: Layout) -> int:
    _stop_agent(layout, a.name)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="eep-localcluster", description=__doc__.split("\n")[0])
    p.add_argument("--state", default=".local/cluster", help="state directory (default .local/cluster)")
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start or reuse the control plane and the node agents")
    up.add_argument("--nodes", type=int, default=1)
    up.add_argument("--gpus", type=int, default=0, help="nvidia.com/gpu capacity per node")
    up.add_argument("--max-pods", type=int, default=250, help="pods capacity per node")
    up.add_argument("--fake", action="store_true", help="fake kubelets: statuses only, no processes")
    up.add_argument("--venv-bin", help="first on every container's PATH (default: this python's bin/)")
    up.add_argument(
        "--bin-dir", help="control-plane binaries (default: hack/build-control-plane.sh's output)"
    )
    up.add_argument(
        "--node-monitor-grace", type=int, default=15, help="seconds until a silent node is NotReady"
    )
    up.add_argument("--exit-with", type=int, help="run `down` when this pid exits (test sessions)")
    sub.add_parser("down", help="stop everything, leaving no process")
    sub.add_parser("watch", help="internal: `down` when a pid exits").add_argument("pid", type=int)
    sub.add_parser("status", help="show what runs (exit 1 when the apiserver is not ready)")
    sub.add_parser("env", help="print shell exports for KUBECONFIG and PATH")
    node = sub.add_parser("node", help="run one node agent in the foreground")
    node.add_argument("--name", required=True)
    node.add_argument("--gpus", type=int, default=0)
    node.add_argument("--max-pods", type=int, default=250)
    node.add_argument("--fake", action="store_true")
    node.add_argument("--venv-bin")
    node.add_argument("--taint", action="append", default=[], help="key=value:Effect, repeatable")
    start = sub.add_parser("start-node", help="start one node agent (again: with the options it had)")
    start.add_argument("name")
    start.add_argument("agent_args", nargs=argparse.REMAINDER, help="agent options for a new node")
    sub.add_parser("stop-node", help="stop one node agent").add_argument("name")
    kq = sub.add_parser("kueue", help="start, stop or show Kueue on the running control plane")
    kq.add_argument("action", choices=("up", "down", "status"))
    kq.add_argument("--home", help="hack/build-kueue.sh's output (default: its cache directory)")
    a = p.parse_args(argv)
    layout = Layout(Path(a.state).resolve())
    handlers = {
        "up": cmd_up,
        "down": cmd_down,
        "status": cmd_status,
        "env": cmd_env,
        "node": cmd_node,
        "start-node": cmd_start_node,
        "stop-node": cmd_stop_node,
        "watch": cmd_watch,
        "kueue": cmd_kueue,
    }
    return handlers[a.cmd](a, layout)


if __name__ == "__main__":
    sys.exit(main())
