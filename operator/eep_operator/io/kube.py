"""The Kubernetes API as the operator uses it: a small `KubeClient` Protocol and its implementation.

Objects travel as plain JSON dicts with camelCase keys (what the API server sends), so the core's `observe`
reads the same shape in production and in tests. Called by `eep_operator.reconcile`, the executor and the
Lease elector. Every method raises only the error types below.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from eep_contract.v1alpha1 import GROUP, PLURAL, VERSION

Obj = dict[str, Any]
T = TypeVar("T")


class KubeError(Exception):
    """Base of the client's errors."""


class NotFoundError(KubeError):
    """404: the object does not exist (or the uid precondition points at an object that is gone)."""


class AlreadyExistsError(KubeError):
    """409 AlreadyExists on create."""


class ConflictError(KubeError):
    """409 Conflict: the resourceVersion (or uid) precondition failed; re-read and recompute."""


class TransientError(KubeError):
    """429, 5xx, timeouts and connection errors that outlived the client's retries."""


class PermanentError(KubeError):
    """Any other API error (400, 403, 422...): retrying the same request will not help."""


class KubeClient(Protocol):
    """What the operator needs from the API server."""

    def get_cluster(self, namespace: str, name: str) -> Obj | None:
        """The ElasticEPCluster, or None if it does not exist."""

    def list_clusters(self, namespace: str | None) -> list[Obj]:
        """Every ElasticEPCluster (in `namespace`, or all namespaces for None)."""

    def list_pods(self, namespace: str, label_selector: str) -> list[Obj]:
        """Pods of `namespace` matching the selector."""

    def list_nodes(self) -> list[Obj]:
        """All nodes."""

    def service_exists(self, namespace: str, name: str) -> bool: ...

    def create(self, manifest: Obj) -> Obj:
        """Create a Pod, Service or PodDisruptionBudget. Raises AlreadyExistsError."""

    def delete_pod(self, namespace: str, name: str, uid: str, *, force: bool = False) -> None:
        """Delete only if the pod still has `uid`; `force` sets grace period 0. Raises NotFoundError,
        ConflictError (uid differs)."""

    def replace_status(self, cr: Obj, status: Obj) -> Obj:
        """Write the CR's status, compare-and-set on `cr`'s resourceVersion. Raises ConflictError."""

    def create_event(self, event: Obj) -> None:
        """Create a core/v1 Event in its namespace."""

    def get_service(self, namespace: str, name: str) -> Obj | None:
        """The Service, or None if it does not exist."""

    def patch_service_spec(self, namespace: str, name: str, spec: Obj) -> None:
        """JSON merge patch of the Service's `spec` (lists such as `ports` are replaced whole). Raises
        NotFoundError."""

    def annotate_cluster(self, cr: Obj, annotations: dict[str, str]) -> Obj:
        """Write `annotations` on the CR (the operator's durable records: `elasticep.io/epoch-floor`,
        `elasticep.io/group-spec`), compare-and-set on `cr`'s resourceVersion; returns the updated CR (its new
        resourceVersion is what the status write needs). Raises ConflictError."""

    def release_pod_finalizer(self, namespace: str, name: str, uid: str, index: int, finalizer: str) -> None:
        """Remove entry `index` of the pod's `metadata.finalizers` if it is `finalizer` and the pod still has
        `uid` (a JSON patch with `test` ops). Raises NotFoundError; ConflictError when a test fails (the pod
        or its finalizers changed: nothing removed)."""

    def remove_finalizer(self, namespace: str, name: str, finalizer: str) -> bool:
        """Remove `finalizer` from the CR's `metadata.finalizers` and nothing else (a JSON patch whose `test`
        op checks the entry it removes). Returns False if the CR does not carry it. Raises NotFoundError."""

    def pdb_exists(self, namespace: str, name: str) -> bool:
        """Whether the policy/v1 PodDisruptionBudget `name` exists."""


def classify(e: ApiException) -> KubeError:
    """Map an ApiException to our error types."""
    status = e.status or 0
    reason = ""
    with contextlib.suppress(ValueError, AttributeError):
        reason = json.loads(e.body or "{}").get("reason", "")
    if status == 404:
        return NotFoundError(str(e.reason))
    if status == 409:
        return (
            AlreadyExistsError(str(e.reason)) if reason == "AlreadyExists" else ConflictError(str(e.reason))
        )
    if status == 429 or status >= 500 or status == 0:
        return TransientError(f"{status} {e.reason}")
    return PermanentError(f"{status} {e.reason}: {e.body}")


def with_retries(call: Callable[[], T], attempts: int = 4, base_delay: float = 0.1) -> T:
    """Run `call`, retrying transient errors with exponential backoff; other errors are raised typed."""
    for i in range(attempts):
        try:
            return call()
        except ApiException as e:
            err = classify(e)
            if not isinstance(err, TransientError) or i == attempts - 1:
                raise err from e
        except (OSError, TimeoutError) as e:  # urllib3 connection errors derive from OSError
            if i == attempts - 1:
                raise TransientError(str(e)) from e
        time.sleep(base_delay * 2**i)
    raise AssertionError("unreachable")


def _json(resp: Any) -> Any:
    return json.loads(resp.data)


def _drain(resp: Any) -> None:
    """Read a response whose body we do not need. With `_preload_content=False` urllib3 returns the
    connection to the pool only once the body has been read; an unread one is closed by the garbage
    collector and the next request pays a new TLS handshake (the operator's main CPU cost at scale)."""
    resp.data  # noqa: B018


class ApiKubeClient:
    """`KubeClient` on the official `kubernetes` client (sync; called from worker threads)."""

    def __init__(self, api_client: client.ApiClient, request_timeout: float = 10.0) -> None:
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.policy = client.PolicyV1Api(api_client)
        self.timeout = request_timeout

    def get_cluster(self, namespace: str, name: str) -> Obj | None:
        try:
            return with_retries(  # type: ignore[no-any-return]
                lambda: _json(
                    self.custom.get_namespaced_custom_object(
                        GROUP, VERSION, namespace, PLURAL, name,
                        _preload_content=False, _request_timeout=self.timeout,
                    )
                )
            )  # fmt: skip
        except NotFoundError:
            return None

    def list_clusters(self, namespace: str | None) -> list[Obj]:
        def call() -> Any:
            if namespace is None:
                return self.custom.list_cluster_custom_object(
                    GROUP, VERSION, PLURAL, _preload_content=False, _request_timeout=self.timeout
                )
            return self.custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, _preload_content=False, _request_timeout=self.timeout
            )

        return list(with_retries(lambda: _json(call()))["items"])

    def list_pods(self, namespace: str, label_selector: str) -> list[Obj]:
        return list(
            with_retries(
                lambda: _json(
                    self.core.list_namespaced_pod(
                        namespace, label_selector=label_selector,
                        _preload_content=False, _request_timeout=self.timeout,
                    )
                )
            )["items"]
        )  # fmt: skip

    def list_nodes(self) -> list[Obj]:
        return list(
            with_retries(
                lambda: _json(self.core.list_node(_preload_content=False, _request_timeout=self.timeout))
            )["items"]
        )

    def service_exists(self, namespace: str, name: str) -> bool:
        try:
            with_retries(
                lambda: _drain(
                    self.core.read_namespaced_service(
                        name, namespace, _preload_content=False, _request_timeout=self.timeout
                    )
                )
            )
        except NotFoundError:
            return False
        return True

    def create(self, manifest: Obj) -> Obj:
        """POST the manifest as rendered. Not through the client's typed `create_namespaced_*`: those validate
        the body against the client's own models first, which refuse what the API server accepts (a quantity
        written as a number, `nvidia.com/gpu: 8`, in a user's pod template) and know only the fields of the
        client's release. The API server is the one validator."""
        ns = manifest["metadata"]["namespace"]
        paths = {
            "Pod": "/api/v1/namespaces/{namespace}/pods",
            "Service": "/api/v1/namespaces/{namespace}/services",
            "PodDisruptionBudget": "/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets",
        }
        path = paths.get(manifest["kind"])
        if path is None:
            raise PermanentError(f"cannot create kind {manifest['kind']}")
        return dict(with_retries(lambda: self._post(path, ns, manifest)))

    def _post(self, path: str, namespace: str, body: Obj) -> Any:
        """The API's answer to a POST of `body`; raises ApiException (typed by status) on anything but 2xx."""
        api = self.core.api_client
        method, url, headers, data, _ = api.param_serialize(
            method="POST",
            resource_path=path,
            path_params={"namespace": namespace},
            header_params={"Content-Type": "application/json", "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        resp = api.call_api(method, url, header_params=headers, body=data, _request_timeout=self.timeout)
        raw = resp.read()
        if not 200 <= resp.status <= 299:
            raise ApiException.from_response(http_resp=resp, body=raw.decode(errors="replace"), data=None)
        return json.loads(raw)

    def delete_pod(self, namespace: str, name: str, uid: str, *, force: bool = False) -> None:
        body: Any = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"uid": uid}}
        if force:
            body["gracePeriodSeconds"] = 0
        with_retries(
            lambda: _drain(
                self.core.delete_namespaced_pod(
                    name, namespace, body=body, grace_period_seconds=0 if force else None,
                    _preload_content=False, _request_timeout=self.timeout,
                )
            )
        )  # fmt: skip

    def replace_status(self, cr: Obj, status: Obj) -> Obj:
        meta = cr["metadata"]
        body = {
            "apiVersion": cr.get("apiVersion", f"{GROUP}/{VERSION}"),
            "kind": cr.get("kind", "ElasticEPCluster"),
            "metadata": {
                "name": meta["name"],
                "namespace": meta["namespace"],
                "resourceVersion": meta["resourceVersion"],
            },
            "spec": cr.get("spec", {}),
            "status": status,
        }
        return dict(
            with_retries(
                lambda: _json(
                    self.custom.replace_namespaced_custom_object_status(
                        GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], body,
                        _preload_content=False, _request_timeout=self.timeout,
                    )
                )
            )
        )  # fmt: skip

    def create_event(self, event: Obj) -> None:
        ns = event["metadata"]["namespace"]
        raw: Any = event  # the client accepts plain dicts; its annotations say model objects
        with_retries(
            lambda: _drain(
                self.core.create_namespaced_event(
                    ns, raw, _preload_content=False, _request_timeout=self.timeout
                )
            ),
            attempts=2,
        )

    def release_pod_finalizer(self, namespace: str, name: str, uid: str, index: int, finalizer: str) -> None:
        path = f"/metadata/finalizers/{index}"
        ops: Any = [
            {"op": "test", "path": "/metadata/uid", "value": uid},
            {"op": "test", "path": path, "value": finalizer},
            {"op": "remove", "path": path},
        ]
        try:
            with_retries(
                lambda: _drain(
                    self.core.patch_namespaced_pod(
                        name, namespace, ops,
                        _content_type="application/json-patch+json",
                        _preload_content=False, _request_timeout=self.timeout,
                    )
                )
            )  # fmt: skip
        except PermanentError as e:
            if str(e).startswith("422"):  # a `test` failed: another pod, or the finalizers changed
                raise ConflictError(f"{namespace}/{name}: {e}") from e
            raise

    def remove_finalizer(self, namespace: str, name: str, finalizer: str) -> bool:
        for _ in range(4):
            cr = self.get_cluster(namespace, name)
            if cr is None:
                raise NotFoundError(f"{namespace}/{name}")
            finalizers = list(cr["metadata"].get("finalizers") or [])
            if finalizer not in finalizers:
                return False
            path = f"/metadata/finalizers/{finalizers.index(finalizer)}"
            try:
                self._json_patch_cluster(
                    namespace,
                    name,
                    [{"op": "test", "path": path, "value": finalizer}, {"op": "remove", "path": path}],
                )
            except PermanentError as e:
                # 422: the `test` failed, the list changed since it was read; read it again.
                if not str(e).startswith("422"):
                    raise
                continue
            return True
        raise ConflictError(f"{namespace}/{name}: finalizers kept changing")

    def _json_patch_cluster(self, namespace: str, name: str, ops: list[Obj]) -> None:
        body: Any = ops  # the client accepts a list for a JSON patch; its annotations say a dict
        with_retries(
            lambda: _drain(
                self.custom.patch_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, name, body,
                    _content_type="application/json-patch+json",
                    _preload_content=False, _request_timeout=self.timeout,
                )
            )
        )  # fmt: skip

    def pdb_exists(self, namespace: str, name: str) -> bool:
        try:
            with_retries(
                lambda: _drain(
                    self.policy.read_namespaced_pod_disruption_budget(
                        name, namespace, _preload_content=False, _request_timeout=self.timeout
                    )
                )
            )
        except NotFoundError:
            return False
        return True

    def annotate_cluster(self, cr: Obj, annotations: dict[str, str]) -> Obj:
        meta = cr["metadata"]
        body: Any = {"metadata": {"resourceVersion": meta["resourceVersion"], "annotations": annotations}}
        return dict(
            with_retries(
                lambda: _json(
                    self.custom.patch_namespaced_custom_object(
                        GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], body,
                        _content_type="application/merge-patch+json",
                        _preload_content=False, _request_timeout=self.timeout,
                    )
                )
            )
        )  # fmt: skip

    def get_service(self, namespace: str, name: str) -> Obj | None:
        try:
            return dict(
                with_retries(
                    lambda: _json(
                        self.core.read_namespaced_service(
                            name, namespace, _preload_content=False, _request_timeout=self.timeout
                        )
                    )
                )
            )
        except NotFoundError:
            return None

    def patch_service_spec(self, namespace: str, name: str, spec: Obj) -> None:
        body: Any = {"spec": spec}
        with_retries(
            lambda: _drain(
                self.core.patch_namespaced_service(
                    name, namespace, body, _content_type="application/merge-patch+json",
                    _preload_content=False, _request_timeout=self.timeout,
                )
            )
        )  # fmt: skip
