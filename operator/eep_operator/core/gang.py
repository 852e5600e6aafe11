"""Gang admission through Kueue's plain-pod groups: which labels a member pod carries, and which Kueue
finalizer the operator may release. Pure.

A cluster is *queued* when its template names a Kueue LocalQueue (`kueue.x-k8s.io/queue-name` in
`spec.template.metadata.labels`). Its member pods then form one Kueue pod group per group start: Kueue's
webhook gates them (`kueue.x-k8s.io/admission`) and admits the group whole, when its quota fits all `nodes`
members, or not at all. Kueue's semantics (v0.17.0, read in its source and seen on the local control plane,
tests/localcluster/test_localcluster_kueue.py):

- A first start and a whole-group restart create pods under a new group name, `<cluster>-e<epoch>`: the
  membership epoch only grows (also across a lost status), so a restarted group never reuses the name of the
  Workload before it. Pods of one start created in later plans take the name of the start's pods that exist.
- A replacement takes the group name of the running members: the group's Workload is still admitted, so Kueue
  ungates it at once (a replacement is never held behind a gang) and accounts it against the group's quota.
  Kueue wants it the same shape as the pod it replaces (requests, tolerations, affinity...; not the command
  line): it is rendered from the group's spec revision, so it is.
- Kueue holds every pod of a group with the finalizer `kueue.x-k8s.io/managed` and releases a dead one only
  once its replacement exists, which a replacement of the same name cannot. The operator releases that one
  finalizer itself, from a pod it deleted whose containers have all ended: the pod is gone for Kueue's
  accounting then, and the replacement (or the next group) takes its place.
"""

from __future__ import annotations

from collections.abc import Iterable

from eep_contract.v1alpha1 import ElasticEPClusterSpec, Kueue


def queued(spec: ElasticEPClusterSpec) -> bool:
    """Whether the cluster's pods go through a Kueue LocalQueue."""
    return Kueue.QUEUE_LABEL in spec.template.metadata.labels


def new_group_name(cluster: str, epoch: int) -> str:
    """The Kueue pod group of a group start at membership epoch `epoch`."""
    return f"{cluster}-e{epoch}"


def finalizer_to_release(finalizers: Iterable[str]) -> int | None:
    """The index of Kueue's finalizer in a pod's `metadata.finalizers`, or None."""
    for i, name in enumerate(finalizers):
        if name == Kueue.FINALIZER:
            return i
    return None
