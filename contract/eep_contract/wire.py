"""Wire formats between the halves, besides the CR itself: the membership snapshot and the reference
model's HTTP API.

Who uses it: the worker's membership sources (`eep_worker.membership`) parse snapshots with
`parse_membership`; whatever feeds a worker a snapshot without the API server (a file, a ZMQ feed; the test
kit's operator stand-in) writes `Membership(...).to_wire()`. The worker's HTTP server (`eep_worker.serve`)
reads `InferRequest` and answers `InferReply`; clients (the demo, the test kit, the benchmarks) send and check
the same models.

HTTP (member 0 serves clients; every member serves readiness and metrics):

- GET `/ready`: 200 once every rank of the pod joined and holds the metadata, else 503; `ReadyReply`.
- GET `/healthz`: 200 `{"ok": true}` while the pod's supervisor runs.
- GET `/metrics`: Prometheus text.
- GET `/v1/model` (member 0): `{"config": {...}, "max_batch_tokens": int}`, the reference model's settings.
- POST `/v1/infer` (member 0), body `InferRequest`: 200 `InferReply`; 400/413 bad input, 503 not ready,
  504 timed out, each with an `ErrorReply`.
- GET `/v1/group` (member 0): 200 `GroupView`, the leader's own view of which ranks are live in the group
  (the operator's evidence that a lost node's ranks left it: `eep_operator.io.groupview`); 503 `ErrorReply`
  until the leader has reported one; 404 on other members.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, model_validator

from eep_contract.v1alpha1 import Membership

__all__ = [
    "GROUP_PATH",
    "INFER_PATH",
    "MODEL_PATH",
    "READY_PATH",
    "VOCAB_SIZE",
    "ErrorReply",
    "GroupView",
    "InferReply",
    "InferRequest",
    "ReadyReply",
    "parse_membership",
]

READY_PATH = "/ready"
INFER_PATH = "/v1/infer"
MODEL_PATH = "/v1/model"
GROUP_PATH = "/v1/group"
VOCAB_SIZE = 1024
"""Token ids the reference model accepts: [0, VOCAB_SIZE)."""


def parse_membership(raw: Any) -> Membership:
    """A membership snapshot from JSON text/bytes or a decoded object: a `Membership`, a status holding one,
    or a whole ElasticEPCluster object.

    Raises ValueError (not JSON, not an object, no epoch, invalid fields, a rank both active and joining, a
    negative rank)."""
    if isinstance(raw, (bytes, str)):
        try:
            raw = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"not JSON: {e}") from e
    if not isinstance(raw, dict):
        raise ValueError(f"snapshot must be an object, got {type(raw).__name__}")
    if isinstance(raw.get("status"), dict):
        raw = raw["status"]
    if isinstance(raw.get("membership"), dict):
        raw = raw["membership"]
    if "epoch" not in raw:
        raise ValueError("snapshot has no epoch")
    try:
        snap = Membership.model_validate(raw)
    except ValidationError as e:
        raise ValueError(str(e)) from e
    both = set(snap.active_ranks) & set(snap.joining_ranks)
    if both:
        raise ValueError(f"ranks both active and joining: {sorted(both)}")
    if any(r < 0 for r in [*snap.active_ranks, *snap.joining_ranks]):
        raise ValueError("negative rank")
    return snap


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InferRequest(_Wire):
    """POST /v1/infer: a batch of token ids for the reference MoE model."""

    request_id: StrictStr = Field(
        min_length=1, max_length=256, description="Client's id; echoed in the reply."
    )
    tokens: list[StrictInt] = Field(min_length=1, description="Token ids in [0, VOCAB_SIZE).")


class InferReply(_Wire):
    """The answer to an `InferRequest`."""

    request_id: str
    output: list[list[float]] = Field(description="One hidden-size row per token.")
    epoch: int = Field(description="Membership epoch of the step that served it.")
    active_ranks: list[int] = Field(description="Ranks that took part in that step.")
    degraded: bool = Field(description="Served with ranks missing (on live expert replicas).")


class ReadyReply(_Wire):
    """GET /ready: the pod's ranks that joined and hold the metadata."""

    ready: list[int]


class ErrorReply(_Wire):
    """Any non-200 answer."""

    error: str


class GroupView(_Wire):
    """GET /v1/group (member 0): the ranks the leader (global rank 0) counts live in the Mooncake group.

    A rank is live while the world group's active flags, as rank 0 read them for its last step, show it: a
    killed rank stays live until a collective with it has failed and the step fence passed with Mooncake's
    new view (`eep_contract.pause.RecoveryPause.pause_s` after the kill, plus one step); an admitted joiner
    is live from the step after its RECOVER step. A rank absent here is out of the group: its replacement
    may join. Raises pydantic's ValidationError (a ValueError) on a rank outside ``[0, world_size)``, ranks
    not ascending or repeated, or an age that is negative or not finite."""

    epoch: StrictInt = Field(ge=0, description="Membership epoch the leader serves with.")
    world_size: StrictInt = Field(ge=1, description="Global ranks of the group, live or not.")
    live_ranks: list[StrictInt] = Field(
        description="Global ranks active in the group and not fenced out, ascending."
    )
    updated_seconds_ago: float = Field(
        ge=0,
        allow_inf_nan=False,
        description="Seconds since rank 0 last reported a step or a change of this view: how old it is. "
        "It grows while the leader is parked (a fence, a join) or hung.",
    )

    @model_validator(mode="after")
    def _ranks_in_world(self) -> GroupView:
        if self.live_ranks != sorted(set(self.live_ranks)):
            raise ValueError(f"live_ranks {self.live_ranks} not ascending without repeats")
        bad = [r for r in self.live_ranks if not 0 <= r < self.world_size]
        if bad:
            raise ValueError(f"ranks {bad} outside the world of {self.world_size}")
        return self
