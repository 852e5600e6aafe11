"""The SGLang release rules, on the real API server: the CRD's CEL rules and the models' own checks give the
same verdict, with the same message, on every combination of release, join flag and recovery mode below.

The operator validates what it reads with the models (`eep_contract.v1alpha1`); if the two disagreed, a CR
the API server accepted would stop the operator (an `InvalidSpec` Event), or the operator would act on a CR
the schema meant to refuse. tests/data/invalid/sglang-*.yaml hold one file per message.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from eep_contract.v1alpha1 import GROUP, PLURAL, VERSION, ElasticEPCluster, SGLangReleases

pytestmark = pytest.mark.cluster

VERSIONS = (
    "0.5.9",
    "0.5.10",
    "0.5.11",
    "0.5.15",
    "0.5.16",
    "0.5.20",
    "0.5.21",
    "0.5.23",
    "0.5.23.post1",
    "0.6.0",
)
FLAGS = ("Auto", "JoinModeRecover", "Rejoin")
MODES = ("PerMember", "GroupRestart")
MESSAGES = (
    SGLangReleases.VERSION_MESSAGE,
    SGLangReleases.REJOIN_MESSAGE,
    SGLangReleases.JOIN_MODE_MESSAGE,
    SGLangReleases.NO_JOIN_FLAG_MESSAGE,
)


def body(version: str, flag: str, mode: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ElasticEPCluster",
        "metadata": {"name": "rules"},
        "spec": {
            "image": "i",
            "nodes": 2,
            "recovery": {"mode": mode},
            "engine": {"name": "sglang", "sglang": {"modelPath": "m", "version": version, "joinFlag": flag}},
        },
    }


def messages(text: str) -> set[str]:
    return {m for m in MESSAGES if m in text}


def test_schema_and_models_agree_on_every_combination(kube: Any, namespace: str) -> None:
    api = client.CustomObjectsApi(kube)
    disagree, refused = [], 0
    for version in VERSIONS:
        for flag in FLAGS:
            for mode in MODES:
                cr = body(version, flag, mode)
                try:
                    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, cr, dry_run="All")
                    server: set[str] | None = None
                except ApiException as e:
                    assert e.status == 422, e.body
                    server = messages(json.loads(e.body)["message"])
                try:
                    ElasticEPCluster.model_validate(cr)
                    model: set[str] | None = None
                except ValidationError as e:
                    model = messages(str(e))
                refused += server is not None
                # The model stops at the first rule it breaks; the API server reports every rule.
                if (server is None) != (model is None) or (model and server and not model <= server):
                    disagree.append((version, flag, mode, server, model))
    assert not disagree, disagree
    assert 0 < refused < len(VERSIONS) * len(FLAGS) * len(MODES)
