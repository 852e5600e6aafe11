"""End to end: node drains (voluntary disruptions) on the local control plane (issue #13, scenario 7).

A drain evicts through the Eviction API; the API server deletes the pod and the process node stops it, like a
kubelet. The operator's PodDisruptionBudget lets one member go at a time: the next eviction of a Ready
member is refused (429) until the member that left has rejoined (Ready again). Evictions are not crashes:
they never spend `maxRestartsPerMember`, so drains do not end in a group restart or phase Failed.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import Eep, Operators, cluster_manifest
from kubernetes.client.exceptions import ApiException
from test_e2e_recovery import wait_running

from eep_contract.v1alpha1 import GROUP, PLURAL, VERSION, Labels
from eep_testkit import crs

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

JOIN_DELAY_S = 6
"""A replacement gets Ready this long after it starts: the window in which the next drain must wait."""

NAME = "eep"

PDB_REFUSAL = "Cannot evict pod as it would violate the pod's disruption budget"
"""kubectl drain's message for an eviction the API server refused with 429 (it retries every 5 s)."""


@dataclass
class Drain:
    """`kubectl drain NODE` running in the background through the Eviction API."""

    node: str
    proc: subprocess.Popen[str]
    log: Path

    @classmethod
    def start(cls, local_cluster: Any, node: str, tmp: Path) -> Drain:
        log = tmp / f"drain-{node}.log"
        argv = [
            str(local_cluster.kubectl_path), f"--kubeconfig={local_cluster.kubeconfig}",
            "drain", node, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=150s",
        ]  # fmt: skip
        with log.open("w") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, text=True)
        return cls(node, proc, log)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def done(self, timeout: float = 60) -> None:
        """Wait for the drain to end; fail unless it succeeded."""
        assert self.proc.wait(timeout) == 0, f"drain of {self.node} failed:\n{self.output()}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class Watch:
    """What the test saw while a drain ran, one API snapshot at a time."""

    phases: set[str] = field(default_factory=set)
    group_restarts: int = 0
    member1_back_at: float | None = None
    """When a pod of member 1 other than the evicted ones was first seen Ready."""
    member2_evicted_at: float | None = None
    member2_evicted_while_member1_down: bool = False


def ready(pod: dict[str, Any]) -> bool:
    conds = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def watch(
    eep: Eep, drain: Drain, member1_gone: tuple[str, ...], member2_uid: str, timeout: float = 120
) -> Watch:
    """Snapshots every 0.25 s until `drain` is done and the group serves in full again, the cluster went
    Failed, or `timeout` s. `member1_gone`: uids of member 1's evicted pods; `member2_uid`: member 2's pod."""
    seen = Watch()
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        status = eep.status(NAME)
        pods = {p["metadata"]["labels"][Labels.MEMBER]: p for p in eep.pods(NAME)}
        seen.phases.add(str(status.get("phase")))
        seen.group_restarts = max(seen.group_restarts, int(status.get("groupRestarts", 0)))
        p1, p2 = pods.get("1"), pods.get("2")
        back = p1 is not None and p1["metadata"]["uid"] not in member1_gone and ready(p1)
        if back and seen.member1_back_at is None:
            seen.member1_back_at = time.monotonic()
        gone = p2 is None or p2["metadata"]["uid"] != member2_uid or p2["metadata"].get("deletionTimestamp")
        if gone and seen.member2_evicted_at is None:
            seen.member2_evicted_at = time.monotonic()
            seen.member2_evicted_while_member1_down = not back
        if "Failed" in seen.phases or (drain.proc.poll() is not None and eep.running(NAME)):
            break
        time.sleep(0.25)
    return seen


def test_drains_evict_one_member_at_a_time_without_spending_the_crash_budget(  # noqa: PLR0917
    eep: Eep,
    operators: Operators,
    make_cluster: Any,
    wait_for: Any,
    local_cluster: Any,
    kubectl: Any,
    tmp_path: Path,
) -> None:
    """Members 0, 1, 2 each on a node of their own (n0, n1, n2), a spare node, `maxRestartsPerMember: 1`.
    Drain n1, and as soon as member 1's replacement is on the spare node, drain n2: member 2's eviction is
    refused (429) until member 1 is Ready again. Then drain the spare node: member 1's second eviction, over
    its crash budget. Replacements go only where the cordons let them (the template's anti-affinity keeps
    one member per node): member 1 to the spare node, member 2 to n1 (uncordoned once drained), member 1
    again to n2 (likewise). No group restart, never Failed, member 0 untouched.

    Before the fix (no PodDisruptionBudget): `AssertionError: the cluster restarted the whole group`,
    `Watch(phases={'Running', 'Restarting'}, group_restarts=1, ..., member2_evicted_while_member1_down=True)`:
    the second drain evicted member 2 while member 1 was down, two members down with
    `maxUnavailableMembers: 1`. With the budget alone, evictions still counted as crashes:
    `AssertionError: member 1's second eviction failed the cluster`,
    `Watch(phases={'Failed', 'Running'}, ...)`."""
    suffix = eep.ns[-4:]
    nodes = [f"eep-drain-{x}{suffix}" for x in "abcs"]
    spare = nodes[-1]
    label = f"eep-drain-{suffix}"
    drains: list[Drain] = []

    def drain(node: str) -> Drain:
        drains.append(Drain.start(local_cluster, node, tmp_path))
        return drains[-1]

    def scheduled(member: int, node: str, gone: tuple[str, ...]) -> str | None:
        """The uid of member's pod once a new one (not in `gone`) is bound to `node`."""
        p = eep.pod(name, member)
        if p is None or p["metadata"]["uid"] in gone or p["spec"].get("nodeName") != node:
            return None
        return str(p["metadata"]["uid"])

    def describe() -> str:
        return "\n".join([eep.describe(name), *(d.output() for d in drains), operators.logs()])

    try:
        for node in nodes:
            assert local_cluster.run("start-node", node) == 0
        wait_for(lambda: all(kubectl("get", "node", n, "-o", "name") for n in nodes), 60)
        for node in nodes[:-1]:  # the spare node takes members only once labelled
            kubectl("label", "node", node, f"{label}=yes")
        operators.start()
        one_per_node = {
            "podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "labelSelector": {"matchLabels": {Labels.CLUSTER: NAME}},
                        "topologyKey": "kubernetes.io/hostname",
                    }
                ]
            }
        }
        name = make_cluster(
            NAME,
            nodes=3,
            maxRestartsPerMember=1,
            maxUnavailableMembers=1,
            env={"STANDIN_JOIN_DELAY": str(JOIN_DELAY_S)},
            pod={"nodeSelector": {label: "yes"}, "affinity": one_per_node},
        )
        wait_running(eep, wait_for, name, operators)
        st = eep.status(name)
        n0, n1, n2 = (st["members"][i]["node"] for i in (0, 1, 2))
        assert sorted([n0, n1, n2, spare]) == sorted(nodes), st["members"]
        uid = {i: str(st["members"][i]["podUid"]) for i in (0, 1, 2)}
        kubectl("label", "node", spare, f"{label}=yes")

        first = drain(n1)
        joining = wait_for(lambda: scheduled(1, spare, (uid[1],)), 60, describe)
        second = drain(n2)
        first.done()
        kubectl("uncordon", n1)  # member 2's replacement goes there

        seen = watch(eep, second, (uid[1],), uid[2])
        about = f"{seen}\n{describe()}"
        assert "Failed" not in seen.phases, f"the cluster went Failed\n{about}"
        assert seen.group_restarts == 0, f"the cluster restarted the whole group\n{about}"
        assert seen.member2_evicted_at is not None, f"the second drain never evicted member 2\n{about}"
        assert not seen.member2_evicted_while_member1_down, (
            f"member 2 evicted while member 1 was down\n{about}"
        )
        assert PDB_REFUSAL in second.output(), about
        second.done()
        wait_running(eep, wait_for, name, operators)
        member2 = scheduled(2, n1, (uid[2],))
        assert member2, describe()

        kubectl("uncordon", n2)  # member 1's next replacement goes there
        third = drain(spare)
        seen = watch(eep, third, (uid[1], joining), member2)
        assert "Failed" not in seen.phases, (
            f"member 1's second eviction failed the cluster\n{seen}\n{describe()}"
        )
        third.done()
        st = wait_running(eep, wait_for, name, operators)
        assert scheduled(1, n2, (uid[1], joining)), describe()
        assert st["groupRestarts"] == 0 and st["phase"] == "Running"
        assert st["members"][0]["podUid"] == uid[0] and st["members"][0]["restarts"] == 0
        assert [len(st["members"][i].get("evictionTimes", [])) for i in (0, 1, 2)] == [0, 2, 1]
        assert kubectl("get", "node", spare, "-o", "jsonpath={.spec.unschedulable}") == "true"
        pdb = json.loads(kubectl("-n", eep.ns, "get", "pdb", name, "-o", "json"))
        assert pdb["spec"]["minAvailable"] == 2
        assert pdb["metadata"]["ownerReferences"][0]["uid"] == eep.cr(name)["metadata"]["uid"]
        kubectl("uncordon", spare)
    finally:
        for d in drains:
            d.stop()
        for node in nodes:
            local_cluster.run("stop-node", node)
            kubectl("delete", "node", node, "--ignore-not-found", check=False)


def test_a_dedicated_coordinator_is_never_evicted_while_ready(
    eep: Eep, operators: Operators, wait_for: Any, kubectl: Any
) -> None:
    """`elasticEP.coordinator: Dedicated`, two serving members; evictions through the Eviction API, counted
    by the control plane's disruption controller. The Ready coordinator's eviction is refused (429: its loss
    would restart the group); a serving member's is allowed, the other's refused until the first has
    rejoined, then allowed. The coordinator is never touched.

    Before the coordinator's own budget: one budget of `minAvailable: 2` over the three pods let the first
    eviction take the coordinator: `AssertionError: the coordinator was evicted`."""
    body = cluster_manifest(NAME, eep.ns, nodes=2)
    body["spec"].setdefault("elasticEP", {}).update(
        {"coordinator": "Dedicated", "coordinatorRequests": {"cpu": "100m", "memory": "256Mi"}}
    )
    crs.engine_container(body)["env"] = [{"name": "STANDIN_JOIN_DELAY", "value": str(JOIN_DELAY_S)}]
    eep.custom.create_namespaced_custom_object(GROUP, VERSION, eep.ns, PLURAL, body)
    operators.start()
    st = wait_running(eep, wait_for, NAME, operators)
    uid = {i: str(st["members"][i]["podUid"]) for i in (0, 1, 2)}
    pod_name = {i: str(st["members"][i]["podName"]) for i in (0, 1, 2)}

    def describe() -> str:
        return "\n".join(
            [eep.describe(NAME), kubectl("-n", eep.ns, "get", "pdb", "-o", "wide"), operators.logs()]
        )

    def healthy(pdb: str) -> int | None:
        """The disruption controller's count of the budget's Ready pods; None before it exists."""
        got = kubectl("-n", eep.ns, "get", "pdb", pdb, "-o", "json", "--ignore-not-found")
        return int((json.loads(got).get("status") or {}).get("currentHealthy", -1)) if got.strip() else None

    def counted() -> bool:
        """Both budgets counted (or, with one budget over every pod, that one)."""
        return (healthy(NAME) or 0) >= 2 and healthy(f"{NAME}.coordinator") in (None, 1)

    wait_for(counted, 60, describe)

    def evict(member: int) -> int:
        """The Eviction API's answer for the member's pod: 201 (evicted) or the refusal's status."""
        eviction = {"metadata": {"name": pod_name[member], "namespace": eep.ns}}
        try:
            eep.core.create_namespaced_pod_eviction(pod_name[member], eep.ns, eviction)
        except ApiException as e:
            return int(e.status)
        return 201

    assert evict(0) == 429, f"the coordinator was evicted\n{describe()}"
    assert evict(1) == 201, describe()
    assert evict(2) == 429, f"member 2 evicted while member 1 was down\n{describe()}"
    assert evict(0) == 429, f"the coordinator was evicted\n{describe()}"
    st = wait_running(eep, wait_for, NAME, operators)
    pod_name[1] = str(st["members"][1]["podName"])
    wait_for(lambda: healthy(NAME) == 2, 60, describe)
    assert evict(2) == 201, describe()

    def member2_back() -> bool:
        return eep.running(NAME) and eep.member(NAME, 2).get("podUid") not in (None, uid[2])

    wait_for(member2_back, 60, describe)
    st = eep.status(NAME)
    assert st["groupRestarts"] == 0, describe()
    assert st["members"][0]["podUid"] == uid[0] and st["members"][0]["restarts"] == 0, describe()
    # (Not the serving members' eviction counts: a pod evicted without a cordon and gone before the operator
    # looked is a deleted pod to it, PodDeleted, which the drain test above covers with cordons.)
    assert not st["members"][0].get("evictionTimes"), describe()
