"""Pure helpers that turn a Pod (as a JSON dict) into what the process node runs, the way a kubelet would:
`$(VAR)` expansion, fieldRef values, the environment, /etc/hosts content, and why a container cannot start
yet (a volume that cannot be set up, an image that cannot be "pulled", a missing ConfigMap/Secret).

No I/O: values that need the API (configMap/secret keys) come in through a lookup callable. Called by
`runner.py` and `processnode.py`; tested as tables in tests/localcluster/test_localcluster_units.py and
tests/localcluster/test_localcluster_waiting.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
UNPULLABLE_DOMAIN = ".invalid"
"""Images from a registry host under this domain have no local mapping (RFC 2606: such names never resolve, so
a real kubelet's pull fails too); tests use e.g. `registry.invalid/eep/missing:1` to get ErrImagePull."""
_KIND = {"configmap": "ConfigMap", "secret": "Secret"}
_MISSING_ITEM = {
    "configmap": "configmap references non-existent config key: ",
    "secret": "references non-existent secret key: ",
}


class ConfigError(LookupError):
    """The container's environment names a ConfigMap or Secret (or a key of one) that does not exist and is
    not optional: the kubelet's CreateContainerConfigError. The message is the kubelet's."""


@dataclass(frozen=True)
class Waiting:
    """Why a container cannot start yet: a kubelet waiting `reason` (ContainerCreating, ErrImagePull,
    ErrImageNeverPull) and its `message`."""

    reason: str
    message: str


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubelet's `$(VAR)` expansion: a defined VAR is replaced, an undefined one is left as written, and
    `$$` escapes a dollar (so `$$(VAR)` yields the literal `$(VAR)`)."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env.get(name, m.group(0))

    return _REF.sub(sub, text)


def field_value(pod: Obj, path: str, pod_ip: str, host_ip: str) -> str:
    """The value of an env `fieldRef.fieldPath` (the paths the downward API allows for env)."""
    meta = pod.get("metadata", {})
    spec = pod.get("spec", {})
    for prefix, source in (("metadata.labels", "labels"), ("metadata.annotations", "annotations")):
        if path.startswith(prefix + "['") and path.endswith("']"):
            return str(meta.get(source, {}).get(path[len(prefix) + 2 : -2], ""))
    simple: dict[str, str] = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1], {})
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    if path not in simple:
        raise ValueError(f"unsupported fieldRef {path!r}")
    return str(simple[path])


KeyLookup = Callable[[str, str, str], str | None]
"""(kind 'configmap'|'secret', object name, key) -> value, or None when missing."""
MapLookup = Callable[[str, str], Mapping[str, str] | None]
"""(kind 'configmap'|'secret', object name) -> all its data, or None when missing."""


def container_env(
    pod: Obj,
    container: Obj,
    *,
    base: Mapping[str, str],
    pod_ip: str,
    host_ip: str,
    key_lookup: KeyLookup,
    map_lookup: MapLookup,
) -> dict[str, str]:
    """The container's environment: `base` (PATH, service env, ...), then `envFrom`, then `env` (later wins),
    each `env` value expanded against what is defined before it, as the kubelet does. Raises ConfigError for a
    missing ConfigMap/Secret or key that is not `optional` (messages as the kubelet's: `secret "x" not
    found`, `couldn't find key k in Secret ns/x`), ValueError for an unsupported fieldRef."""
    env = dict(base)
    for src in container.get("envFrom") or []:
        prefix = src.get("prefix", "")
        for kind, key in (("configmap", "configMapRef"), ("secret", "secretRef")):
            ref = src.get(key)
            if ref is None:
                continue
            data = map_lookup(kind, ref["name"])
            if data is None and not ref.get("optional"):
                raise ConfigError(f'{kind} "{ref["name"]}" not found')
            for k, v in (data or {}).items():
                env[prefix + k] = v
    for item in container.get("env") or []:
        name = item["name"]
        if "value" in item:
            env[name] = expand(str(item["value"]), env)
            continue
        vf = item.get("valueFrom") or {}
        if "fieldRef" in vf:
            env[name] = field_value(pod, vf["fieldRef"]["fieldPath"], pod_ip, host_ip)
        elif "configMapKeyRef" in vf or "secretKeyRef" in vf:
            kind, ref = (
                ("configmap", vf["configMapKeyRef"])
                if "configMapKeyRef" in vf
                else (
                    "secret",
                    vf["secretKeyRef"],
                )
            )
            value = key_lookup(kind, ref["name"], ref["key"])
            if value is None:
                if not ref.get("optional"):
                    if map_lookup(kind, ref["name"]) is None:
                        raise ConfigError(f'{kind} "{ref["name"]}" not found')
                    where = f"{_KIND[kind]} {pod['metadata'].get('namespace', '')}/{ref['name']}"
                    raise ConfigError(f"couldn't find key {ref['key']} in {where}")
                continue
            env[name] = value
        elif "resourceFieldRef" in vf:
            env[name] = _resource_value(container, vf["resourceFieldRef"]["resource"])
        else:
            env[name] = ""
    return env


def _resource_value(container: Obj, resource: str) -> str:
    kind, _, name = resource.partition(".")
    value = (container.get("resources") or {}).get(kind, {}).get(name)
    return str(value) if value is not None else "0"


def container_argv(container: Obj, env: Mapping[str, str]) -> list[str]:
    """command + args with `$(VAR)` expanded. Raises ValueError when there is no command: the image is not
    pulled, so its entrypoint is unknown."""
    command = [expand(c, env) for c in container.get("command") or []]
    args = [expand(a, env) for a in container.get("args") or []]
    if not command:
        raise ValueError(
            "the process node runs command/args on the host and does not know the image's entrypoint; "
            "set `command`"
        )
    return command + args


def registry_host(image: str) -> str:
    """The registry host (with its port, if any) of an image reference, by the Docker reference rules: the
    part before the first `/` when it has a `.` or `:` or is `localhost`, else `docker.io`."""
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def image_waiting(container: Obj) -> Waiting | None:
    """Why the process node cannot "pull" the container's image; None when it can.

    The process node has no images: a container's `command` runs on the host, whose filesystem stands in for
    every image. So an image counts as present (mapped) when the container sets `command` (whatever the image
    name) and its registry host is not under UNPULLABLE_DOMAIN. Otherwise the pull fails: ErrImagePull, or
    ErrImageNeverPull under `imagePullPolicy: Never` (message as the kubelet's), and the container waits."""
    image = str(container.get("image") or "")
    host = registry_host(image)
    if host.split(":")[0].endswith(UNPULLABLE_DOMAIN):
        why = f"dial tcp: lookup {host.split(':')[0]}: no such host"
    elif not container.get("command"):
        why = (
            "the process node runs a container's command on the host and does not know this image's "
            "entrypoint; set `command`"
        )
    else:
        return None
    if container.get("imagePullPolicy") == "Never":
        return Waiting(
            "ErrImageNeverPull", f'Container image "{image}" is not present with pull policy of Never'
        )
    return Waiting("ErrImagePull", f'failed to pull and unpack image "{image}": {why}')


def volume_waiting(pod: Obj, map_lookup: MapLookup) -> Waiting | None:
    """Why the pod's volumes cannot be set up yet; None when they can. A `secret` or `configMap` volume that a
    container mounts, whose object (or an `items` key) is missing and is not `optional`, keeps every
    container in ContainerCreating, as the kubelet's mount wait does (its FailedMount event's text is the
    message here). Other volume types never wait."""
    mounted = {
        m.get("name")
        for c in pod.get("spec", {}).get("containers") or []
        for m in c.get("volumeMounts") or []
    }
    for vol in pod.get("spec", {}).get("volumes") or []:
        if vol.get("name") not in mounted:
            continue
        for kind, key, name_key in (("secret", "secret", "secretName"), ("configmap", "configMap", "name")):
            src = vol.get(key)
            if src is None or src.get("optional"):
                continue
            name = str(src.get(name_key) or "")
            data = map_lookup(kind, name)
            if data is None:
                why = f'{kind} "{name}" not found'
            else:
                missing = [i["key"] for i in src.get("items") or [] if i.get("key") not in data]
                if not missing:
                    continue
                why = _MISSING_ITEM[kind] + missing[0]
            return Waiting(
                "ContainerCreating", f'MountVolume.SetUp failed for volume "{vol["name"]}" : {why}'
            )
    return None


def wants_sa_token(pod: Obj, container: Obj) -> bool:
    """Mount the service-account directory when the ServiceAccount admission plugin gave the container the
    well-known mount (the normal case), or when automount is on and no volumes are listed at all."""
    mounts = container.get("volumeMounts") or []
    if any(m.get("mountPath") == SA_MOUNT for m in mounts):
        return True
    return bool(pod["spec"].get("automountServiceAccountToken", False))


def hosts_file(pods: Iterable[Obj], *, apiserver_ip: str = "127.0.0.1") -> str:
    """/etc/hosts for every pod: localhost, the apiserver's service names, and one line per pod (on any
    node) that has both `spec.hostname` and `spec.subdomain` and a pod IP, like cluster DNS would resolve."""
    lines = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        f"{apiserver_ip}\tkubernetes.default.svc.cluster.local kubernetes.default.svc kubernetes.default "
        "kubernetes",
    ]
    entries = []
    for pod in pods:
        spec, meta = pod.get("spec", {}), pod.get("metadata", {})
        ip = (pod.get("status") or {}).get("podIP")
        host, sub, ns = spec.get("hostname"), spec.get("subdomain"), meta.get("namespace")
        if not (ip and host and sub and ns) or meta.get("deletionTimestamp"):
            continue
        fq = f"{host}.{sub}.{ns}"
        entries.append(f"{ip}\t{fq}.svc.cluster.local {fq}.svc {fq} {host}.{sub}")
    return "\n".join(lines + sorted(entries)) + "\n"
