"""The process node agent: a small kubelet that runs the pods bound to its Node as local processes.

It registers the Node, renews its Lease and heartbeats the Ready condition (`heartbeat.py`; stop the agent and
the node lifecycle controller marks the Node NotReady after `--node-monitor-grace-period`). A pod informer
(fieldSelector spec.nodeName) wakes one sync loop that starts containers (`runner.py`), polls them, applies
the restart policy, writes pods/status like a kubelet (`podstatus.py`), and finishes deletions (SIGTERM,
SIGKILL after the grace period, then the final delete with grace 0). A container that cannot start yet waits
as it would on a kubelet, retried and never an exit: ContainerCreating while a secret/configMap volume's
object is missing, ErrImagePull / ImagePullBackOff for an image with no local mapping
(`podspec.image_waiting`), CreateContainerConfigError while its env names a missing ConfigMap/Secret. That
loop is the only writer of pod and container state; each probe runs in a thread of its own and reports
through the container start's `podrun.Readiness`. A second informer over all pods keeps every pod's
/etc/hosts current. With `fake=True` no process runs (and nothing waits): pods go Running+Ready at once, and
the annotation `eep.local/fake-exit-code` terminates a pod's first container with that exit code (for the
scale benchmark).

Started by `eep-localcluster node` (which `up` runs detached). It authenticates with a client cert in
system:masters, not as system:node:<name>: the Node authorizer's selector rules (AuthorizeNodeWithSelectors)
limit a node to listing its own pods, and every pod's /etc/hosts needs the pods of all nodes.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from eep_localcluster import ipam, podspec, procs, runner
from eep_localcluster.heartbeat import HOST_IP, NodeHeartbeat
from eep_localcluster.informer import PodInformer
from eep_localcluster.podrun import PodRun, Proc, Readiness, now_utc
from eep_localcluster.podstatus import ContainerState, Termination, backoff_s, pod_status, should_restart
from eep_localcluster.settings import AgentSettings

Obj = dict[str, Any]
SMP = "application/strategic-merge-patch+json"
FAKE_EXIT_ANNOTATION = "eep.local/fake-exit-code"
CONFIG_RETRY_S = 1.0
"""Seconds between tries of a start that waits on a missing ConfigMap/Secret (env or volume) or on an image
under `imagePullPolicy: Never` (the kubelet's pod resync, shorter so tests see the start soon)."""


class Agent:
    def __init__(self, settings: AgentSettings, api: client.ApiClient, log: Callable[[str], None]) -> None:
        self.s = settings
        # Any: the client's models are typed, but the agent speaks raw JSON dicts (`_preload_content=False`
        # for reads, dict bodies for writes) to stay cheap with hundreds of pods.
        self.core: Any = client.CoreV1Api(api)
        self.coord: Any = client.CoordinationV1Api(api)
        self.log = log
        self.runs: dict[str, PodRun] = {}
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.hosts_dirty = threading.Event()
        self.mine = PodInformer(
            self.core, field_selector=f"spec.nodeName={settings.name}", on_change=self.wake.set, log=log
        )
        self.everyone = (
            None
            if settings.fake
            else PodInformer(self.core, field_selector=None, on_change=self._hosts_changed, log=log)
        )
        self.heartbeat = NodeHeartbeat(settings, self.core, self.coord, log)
        self._api_data: dict[tuple[str, str, str], Obj | None] = {}

    def _hosts_changed(self) -> None:
        self.hosts_dirty.set()
        self.wake.set()

    # ---- node and lease ----

    def run(self) -> None:
        for d in (self.s.node_dir / "pods", self.s.ips_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.heartbeat.register()
        threading.Thread(
            target=self.heartbeat.loop, args=(self.stopping,), daemon=True, name="heartbeats"
        ).start()
        self.mine.start()
        if self.everyone is not None:
            self.everyone.start()
        self.log(f"node {self.s.name} registered (fake={self.s.fake})")
        while not self.stopping.is_set():
            self.wake.wait(0.5)
            self.wake.clear()
            try:
                self.sync()
            except Exception as e:
                self.log(f"sync: {type(e).__name__}: {e}")
        self.shutdown()

    def sync(self) -> None:
        if not self.mine.synced.is_set():
            return
        pods = {p["metadata"]["uid"]: p for p in self.mine.snapshot()}
        for uid, pod in pods.items():
            run = self.runs.get(uid)
            if run is None:
                try:
                    self._adopt(pod)
                except Exception as e:  # one pod the agent cannot take on must not stall the others
                    meta = pod.get("metadata") or {}
                    self.log(
                        f"pod {meta.get('namespace')}/{meta.get('name')}: adopt: {type(e).__name__}: {e}"
                    )
            else:
                run.pod = pod
        for uid in list(self.runs):
            if uid not in pods:  # force-deleted: stop whatever runs, forget it
                self._kill(self.runs[uid], signal.SIGKILL)
                self._forget(self.runs[uid])
        if self.hosts_dirty.is_set() and self.everyone is not None and self.everyone.synced.is_set():
            self.hosts_dirty.clear()
            self._write_hosts_all()
        for run in list(self.runs.values()):
            try:
                self._step(run)
            except Exception as e:
                self.log(f"pod {run.ns}/{run.name}: {type(e).__name__}: {e}")

    def _adopt(self, pod: Obj) -> None:
        meta, status = pod["metadata"], pod.get("status") or {}
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        if status.get("phase") in ("Succeeded", "Failed"):
            if meta.get("deletionTimestamp"):
                self._final_delete(ns, name, uid)
            return
        if meta.get("deletionTimestamp"):
            self._final_delete(ns, name, uid)
            return
        ip = ipam.allocate(self.s.ips_dir, uid)
        run = PodRun(pod, ip, self.s.node_dir / "pods" / uid)
        run.dir.mkdir(parents=True, exist_ok=True)
        self.runs[uid] = run
        if any("running" in (c.get("state") or {}) for c in status.get("containerStatuses") or []):
            # Started by an earlier agent. A kubelet would re-attach to containers that still run; this agent
            # cannot wait on processes it did not start, so it ends any that live on (a dead agent's workers
            # keep running until then) and reports them killed, as a rebooted kubelet would, and lets the
            # restart policy decide. Never a report of "killed" while the process still runs.
            self._end_orphans(run)
            for c in run.containers:
                c.terminated = Termination(137, 9, "Error", "process node agent restarted", None, now_utc())
                c.waiting_reason = "ContainerCreating"
                if should_restart(pod["spec"].get("restartPolicy", "Always"), 137):
                    c.last_terminated, c.terminated = c.terminated, None
                    c.restart_count += 1
            if pod["spec"].get("restartPolicy", "Always") == "Never":
                return
        if self.s.fake:
            for c in run.containers:
                c.running_since, c.ready, c.waiting_reason = now_utc(), True, ""
            return
        self._prepare_files(run)

    def _end_orphans(self, run: PodRun) -> None:
        """SIGKILL what still runs of the process groups an earlier agent started for this pod (`<pod
        dir>/pids`: each container's group leader; the leader may be gone while its children run), and wait
        (up to 5 s) until it is gone."""
        try:
            groups = {int(x) for x in (run.dir / "pids").read_text().split()}
        except (OSError, ValueError):
            return
        live = procs.in_groups(self.s.state, groups)
        for pid in live:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and procs.in_groups(self.s.state, groups):
            time.sleep(0.05)
        if live:
            self.log(f"pod {run.ns}/{run.name}: ended {len(live)} process(es) an earlier agent started")

    # ---- files in the pod's namespace ----

    def _prepare_files(self, run: PodRun) -> None:
        self._write_hosts(run, self._hosts_text())
        sa = run.sa_dir
        sa.mkdir(parents=True, exist_ok=True)
        (sa / "ca.crt").write_bytes(self.s.ca_cert.read_bytes())
        (sa / "namespace").write_text(run.ns)
        if not (sa / "token").exists():
            (sa / "token").write_text("")

    def _refresh_token(self, run: PodRun) -> None:
        """TokenRequest bound to the pod, renewed at 80% of its one-hour life (what kubelet does)."""
        if time.monotonic() - run.token_at < 0.8 * 3600 and run.token_at:
            return
        sa_name = run.pod["spec"].get("serviceAccountName") or "default"
        body = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                audiences=[],
                expiration_seconds=3600,
                bound_object_ref=client.V1BoundObjectReference(
                    api_version="v1", kind="Pod", name=run.name, uid=run.uid
                ),
            )
        )
        tr = self.core.create_namespaced_service_account_token(sa_name, run.ns, body)
        with open(run.sa_dir / "token", "w") as f:  # in place: the bind mount pins the inode
            f.write(tr.status.token)
        run.token_at = time.monotonic()

    def _hosts_text(self) -> str:
        return podspec.hosts_file(self.everyone.snapshot() if self.everyone is not None else [])

    @staticmethod
    def _write_hosts(run: PodRun, text: str) -> None:
        if text != run.hosts_text:
            with open(run.hosts, "w") as f:  # in place: the bind mount pins the inode
                f.write(text)
            run.hosts_text = text

    def _write_hosts_all(self) -> None:
        text = self._hosts_text()
        for run in self.runs.values():
            if run.hosts.parent.exists():
                self._write_hosts(run, text)

    def _lookup_data(self, kind: str, name: str, ns: str) -> Obj | None:
        key = (kind, ns, name)
        if key not in self._api_data:
            try:
                if kind == "configmap":
                    raw = self.core.read_namespaced_config_map(name, ns, _preload_content=False).data
                    self._api_data[key] = json.loads(raw).get("data") or {}
                else:
                    raw = self.core.read_namespaced_secret(name, ns, _preload_content=False).data
                    data = json.loads(raw).get("data") or {}
                    self._api_data[key] = {k: base64.b64decode(v).decode() for k, v in data.items()}
            except ApiException as e:
                if e.status != 404:
                    raise podspec.ConfigError(f'failed to get {kind} "{name}": {e.status} {e.reason}') from e
                self._api_data[key] = None
        return self._api_data[key]

    # ---- containers ----

    def _container_env(self, run: PodRun, spec: Obj) -> dict[str, str]:
        base = dict(self.s.inherit_env)
        base.update(
            {
                "PATH": f"{self.s.venv_bin}:{self.s.host_path}",
                "HOME": os.environ.get("HOME", "/root"),
                "HOSTNAME": run.pod["spec"].get("hostname") or run.name,
                "KUBERNETES_SERVICE_HOST": HOST_IP,
                "KUBERNETES_SERVICE_PORT": str(self.s.apiserver_port),
                "KUBERNETES_SERVICE_PORT_HTTPS": str(self.s.apiserver_port),
                "KUBERNETES_PORT": f"tcp://{HOST_IP}:{self.s.apiserver_port}",
            }
        )
        return podspec.container_env(
            run.pod,
            spec,
            base=base,
            pod_ip=run.ip,
            host_ip=HOST_IP,
            key_lookup=lambda kind, name, key: (self._lookup_data(kind, name, run.ns) or {}).get(key),
            map_lookup=lambda kind, name: self._lookup_data(kind, name, run.ns),
        )

    def _mounts(self, run: PodRun, spec: Obj) -> list[runner.Mount]:
        mounts = [runner.Mount(run.hosts, "/etc/hosts", is_dir=False)]
        if podspec.wants_sa_token(run.pod, spec):
            mounts.append(runner.Mount(run.sa_dir, podspec.SA_MOUNT, is_dir=True))
        term = run.dir / f"{spec['name']}.termination"
        term.write_text("")
        target = spec.get("terminationMessagePath") or runner.DEFAULT_TERMINATION_PATH
        mounts.append(runner.Mount(term, target, is_dir=False))
        volumes = {v["name"]: v for v in run.pod["spec"].get("volumes") or []}
        # Pods share the host's filesystem, so a volume mounted over a folder that holds the project's
        # virtualenv or this pod's own files (an emptyDir at /tmp for a clone under /tmp, say) would hide the
        # very programs the pod runs. Such a mount is left out, and the pod writes to the host folder instead.
        needed = (self.s.venv_bin.resolve(), run.dir.resolve())
        for vm in spec.get("volumeMounts") or []:
            if any(p.is_relative_to(Path(vm["mountPath"])) for p in needed):
                where = f"{vm['name']} at {vm['mountPath']}"
                self.log(f"pod {run.ns}/{run.name}: not mounting {where}: it would hide the pod's own files")
                continue
            vol = volumes.get(vm["name"], {})
            if "emptyDir" in vol:
                src = run.dir / "volumes" / vm["name"]
                src.mkdir(parents=True, exist_ok=True)
                mounts.append(runner.Mount(src, vm["mountPath"], is_dir=True))
            elif "hostPath" in vol:
                mounts.append(runner.Mount(Path(vol["hostPath"]["path"]), vm["mountPath"], is_dir=True))
        return mounts

    def _start(self, run: PodRun, c: ContainerState) -> None:
        """Start the container, or leave it waiting (`ContainerState.cannot_start`) in the kubelet's order:
        volumes, then the image, then the container's configuration."""
        spec = run.spec_of(c.name)
        c.image = str(spec.get("image") or c.image)  # a waiting container starts with the pod's current image
        log_path = run.dir / f"{c.name}.log"
        now = now_utc()
        retry = now + datetime.timedelta(seconds=CONFIG_RETRY_S)
        self._api_data.clear()  # fresh reads for each start; shared by its volume and env lookups
        try:
            volumes = podspec.volume_waiting(
                run.pod, lambda kind, name: self._lookup_data(kind, name, run.ns)
            )
        except podspec.ConfigError as e:
            volumes = podspec.Waiting("ContainerCreating", f"MountVolume.SetUp failed: {e}")
        if volumes is not None:
            c.cannot_start(volumes.reason, volumes.message, retry)
            return
        pull = podspec.image_waiting(spec)
        if pull is not None:
            if pull.reason == "ErrImagePull":
                retry = now + datetime.timedelta(seconds=backoff_s(c.pull_failures))
                c.pull_failures += 1
            c.cannot_start(pull.reason, pull.message, retry)
            return
        c.pull_failures = 0
        try:
            env = self._container_env(run, spec)
            argv = podspec.container_argv(spec, env)
        except Exception as e:  # the kubelet's rule: any failure to build the config is this waiting reason
            message = str(e) if isinstance(e, LookupError | ValueError) else f"{type(e).__name__}: {e}"
            c.cannot_start("CreateContainerConfigError", message, retry)
            return
        popen = runner.start(
            argv,
            env=env,
            mounts=self._mounts(run, spec),
            working_dir=spec.get("workingDir"),
            log=log_path,
            state=self.s.state,
        )
        with (run.dir / "pids").open("a") as f:
            f.write(f"{popen.pid}\n")
        proc = Proc(popen, env, Readiness("readinessProbe" not in spec))
        run.procs[c.name] = proc
        c.running_since, c.terminated, c.restart_at, c.retry_at = now_utc(), None, None, None
        c.container_id = f"process://{popen.pid}"
        c.waiting_reason, c.waiting_message = "", ""
        c.ready = proc.readiness.get()
        for kind in ("readinessProbe", "livenessProbe"):
            if kind in spec:
                threading.Thread(
                    target=self._probe_loop,
                    args=(run, spec, kind, proc),
                    daemon=True,
                    name=f"probe-{kind}",
                ).start()

    def _probe_loop(self, run: PodRun, spec: Obj, kind: str, proc: Proc) -> None:
        """Probe one container start until it exits or the pod stops probing. Runs in its own thread, so it
        touches no `ContainerState`: readiness goes to `proc.readiness` (the sync loop copies it over in
        `_poll`); a failed liveness probe kills the process group, which `_poll` then sees exit."""
        popen, p = proc.popen, spec[kind]
        period = float(p.get("periodSeconds", 10))
        timeout = float(p.get("timeoutSeconds", 1))
        fail_max, ok_min = int(p.get("failureThreshold", 3)), int(p.get("successThreshold", 1))
        fails = oks = 0
        if run.probe_stop.wait(float(p.get("initialDelaySeconds", 0))):
            return
        while popen.poll() is None and not run.probe_stop.is_set():
            ok = runner.probe(
                p, container=spec, pod_ip=run.ip, pid=popen.pid, env=proc.env, timeout_s=timeout
            )
            fails, oks = (0, oks + 1) if ok else (fails + 1, 0)
            if kind == "readinessProbe":
                verdict = True if oks >= ok_min else False if fails >= fail_max else None
                if verdict is not None and proc.readiness.set(verdict):
                    self.wake.set()
            elif fails >= fail_max:
                self.log(f"pod {run.ns}/{run.name} container {spec['name']}: liveness failed, killing")
                runner.signal_group(popen.pid, signal.SIGKILL)
                return
            if run.probe_stop.wait(period):
                return

    def _poll(self, run: PodRun, c: ContainerState) -> None:
        proc = run.procs.get(c.name)
        if proc is None or c.running_since is None:
            return
        rc = proc.popen.poll()
        if rc is None:
            c.ready = proc.readiness.get()
            return
        # The leader exited: kill what it left in its group (kubelet tears down the whole container).
        runner.signal_group(proc.popen.pid, signal.SIGKILL)
        spec = run.spec_of(c.name)
        code, sig = runner.exit_of(rc)
        msg = runner.termination_message(
            run.dir / f"{c.name}.termination",
            run.dir / f"{c.name}.log",
            spec.get("terminationMessagePolicy", "File"),
            code,
        )
        c.terminated = Termination(
            code, sig, "Error" if code else "Completed", msg, c.running_since, now_utc()
        )
        c.running_since, c.ready = None, False
        del run.procs[c.name]
        if run.kill_deadline is None and should_restart(run.pod["spec"].get("restartPolicy", "Always"), code):
            c.restart_at = now_utc() + datetime.timedelta(seconds=backoff_s(c.restart_count))
            c.waiting_reason = "CrashLoopBackOff"

    def _step(self, run: PodRun) -> None:
        pod = run.pod
        deleting = bool(pod["metadata"].get("deletionTimestamp"))
        if self.s.fake:
            self._step_fake(run, deleting)
            return
        for c in run.containers:
            self._poll(run, c)
        if deleting:
            if run.kill_deadline is None:
                grace = pod["metadata"].get("deletionGracePeriodSeconds")
                grace = 30 if grace is None else int(grace)
                run.kill_deadline = time.monotonic() + grace
                run.probe_stop.set()
                self._kill(run, signal.SIGTERM)
            elif time.monotonic() >= run.kill_deadline and run.procs:
                self._kill(run, signal.SIGKILL)
            if not run.procs:
                self._patch_status(run)
                self._final_delete(run.ns, run.name, run.uid)
                self._forget(run)
                return
        else:
            if run.sa_dir.exists():
                self._refresh_token(run)
            now = now_utc()
            for c in run.containers:
                if c.running_since is None and c.retry_at is not None:  # a start that could not happen yet
                    if c.retry_at <= now:
                        self._start(run, c)
                    else:
                        c.pull_backing_off()
                    continue
                due = c.restart_at is None or c.restart_at <= now
                if c.running_since is None and due and (c.terminated is None or c.restart_at is not None):
                    if c.restart_at is not None:
                        c.last_terminated = c.terminated
                        c.restart_count += 1
                    self._start(run, c)
            if not run.procs and all(c.restart_at is None and c.retry_at is None for c in run.containers):
                run.probe_stop.set()
        self._patch_status(run)

    def _step_fake(self, run: PodRun, deleting: bool) -> None:
        if deleting:
            self._final_delete(run.ns, run.name, run.uid)
            self._forget(run)
            return
        code = (run.pod["metadata"].get("annotations") or {}).get(FAKE_EXIT_ANNOTATION)
        c = run.containers[0]
        if code is not None and c.running_since is not None and c.extra.get("done_for") != code:
            c.extra["done_for"] = code
            exit_code = int(code)
            c.terminated = Termination(
                exit_code, None, "Error" if exit_code else "Completed", "", c.running_since, now_utc()
            )
            c.running_since, c.ready = None, False
            if should_restart(run.pod["spec"].get("restartPolicy", "Always"), exit_code):
                c.last_terminated, c.terminated = c.terminated, None
                c.restart_count += 1
                c.running_since, c.ready = now_utc(), True
        self._patch_status(run)

    def _patch_status(self, run: PodRun) -> None:
        prev = (run.pod.get("status") or {}).get("conditions") or []
        status = pod_status(
            restart_policy=run.pod["spec"].get("restartPolicy", "Always"),
            containers=run.containers,
            pod_ip=run.ip,
            host_ip=HOST_IP,
            start_time=run.start_time,
            now=now_utc(),
            previous_conditions=prev,
        )
        comparable = {**status, "conditions": [{**c, "lastTransitionTime": ""} for c in status["conditions"]]}
        if comparable == run.last_status:
            return
        try:
            self.core.patch_namespaced_pod_status(run.name, run.ns, {"status": status}, _content_type=SMP)
        except ApiException as e:
            if e.status != 404:
                raise
        run.last_status = comparable

    def _kill(self, run: PodRun, sig: signal.Signals) -> None:
        for proc in run.procs.values():
            runner.signal_group(proc.popen.pid, sig)

    def _final_delete(self, ns: str, name: str, uid: str) -> None:
        body = client.V1DeleteOptions(grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid))
        try:
            self.core.delete_namespaced_pod(name, ns, body=body, grace_period_seconds=0)
        except ApiException as e:
            if e.status not in (404, 409):
                raise

    def _forget(self, run: PodRun) -> None:
        run.probe_stop.set()
        for proc in run.procs.values():
            runner.signal_group(proc.popen.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(2)
        ipam.release(self.s.ips_dir, run.ip, run.uid)
        self.runs.pop(run.uid, None)

    def shutdown(self) -> None:
        """Kill every pod's process group (SIGTERM, then SIGKILL after 3s). Pods stay in the API as they are:
        to the cluster this is a lost node."""
        for run in self.runs.values():
            run.probe_stop.set()
            self._kill(run, signal.SIGTERM)
        deadline = time.monotonic() + 3
        for run in self.runs.values():
            for proc in run.procs.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(max(0.0, deadline - time.monotonic()))
            self._kill(run, signal.SIGKILL)
        self.mine.stop()
        if self.everyone is not None:
            self.everyone.stop()
