"""Control-plane parts that run without the Kubernetes binaries: the component table, etcd's retry, the
certificates, and detached processes."""

from __future__ import annotations

import datetime
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from eep_localcluster import controlplane, pki, procs
from eep_localcluster.layout import COMPONENTS, Layout


def test_components_start_in_layout_order_and_end_with_the_unchecked_ones() -> None:
    assert tuple(c.name for c in controlplane.CONTROL_PLANE) == COMPONENTS
    checked = [c.health is not None for c in controlplane.CONTROL_PLANE]
    assert checked == sorted(checked, reverse=True)  # `start` checks the others once, after all started


FAKE_ETCD = r"""#!/usr/bin/env python3
# Stands in for etcd: exits at once on its first start, never answers on its second, then serves /health.
import http.server, pathlib, sys, time
count = pathlib.Path(__file__).with_name("starts")
n = int(count.read_text()) + 1 if count.exists() else 1
count.write_text(str(n))
if n == 1:
    sys.exit(1)
if n == 2:
    time.sleep(600)
url = next(a for a in sys.argv if a.startswith("--listen-client-urls=")).split("=", 1)[1]
port = int(url.rsplit(":", 1)[1])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b'{"health":"true"}')
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def test_etcd_that_exits_or_hangs_at_start_is_started_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    etcd_bin = bin_dir / "etcd"
    etcd_bin.write_text(FAKE_ETCD)
    etcd_bin.chmod(0o755)
    real_sleep = time.sleep
    # The pauses between attempts (1 s, 2 s) are skipped; the 0.25 s polls stay.
    monkeypatch.setattr(time, "sleep", lambda s: None if s >= 1 else real_sleep(s))
    picked: list[int] = []

    def fresh_ports(info: controlplane.ClusterInfo) -> controlplane.ClusterInfo:
        moved = controlplane.ETCD_RETRY.fresh_ports(info)
        picked.append(moved.etcd_port)
        return moved

    retry = replace(controlplane.ETCD_RETRY, attempt_timeout_s=5.0, fresh_ports=fresh_ports)
    etcd = replace(controlplane.ETCD, retry=retry)
    layout = Layout(tmp_path / "state")
    for d in ("logs", "run"):
        (layout.root / d).mkdir(parents=True)
    (layout.etcd_data / "member").mkdir(parents=True)
    info = controlplane.ClusterInfo(etcd_port=procs.free_port(), apiserver_port=0, node_monitor_grace_s=15)
    try:
        got = controlplane._launch(etcd, layout, controlplane.ControlPlaneSettings(bin_dir=bin_dir), info)
        assert (bin_dir / "starts").read_text() == "3"
        assert len(picked) == 2 and got.etcd_port == picked[-1]  # each retry moved to a fresh port
        assert len(procs.ours(layout.root)) == 1  # the hung one was stopped
        assert controlplane._http_ok(f"http://127.0.0.1:{got.etcd_port}/health")
        assert not layout.etcd_data.exists()  # every attempt starts from an empty store
    finally:
        procs.sweep(layout.root)


def test_certificates_chain_to_the_ca_with_their_usages(tmp_path: Path) -> None:
    p = pki.Pki(tmp_path / "pki")
    pki.ensure_ca(p)
    pki.ensure_apiserver_cert(p, "10.96.0.1")
    pair = pki.ensure_client_cert(p, "admin", "eep-admin", ("system:masters",))
    ca = x509.load_pem_x509_certificate(p.ca.cert.read_bytes())
    server = x509.load_pem_x509_certificate(p.apiserver.cert.read_bytes())
    admin = x509.load_pem_x509_certificate(pair.cert.read_bytes())

    ca.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ca_usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ca_usage.key_cert_sign and ca_usage.crl_sign and not ca_usage.key_encipherment
    ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)

    for leaf, usage in ((server, ExtendedKeyUsageOID.SERVER_AUTH), (admin, ExtendedKeyUsageOID.CLIENT_AUTH)):
        leaf.verify_directly_issued_by(ca)
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        leaf_usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
        assert leaf_usage.digital_signature and leaf_usage.key_encipherment and not leaf_usage.key_cert_sign
        assert list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [usage]
        assert leaf.not_valid_before_utc < datetime.datetime.now(datetime.UTC) < leaf.not_valid_after_utc

    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "kubernetes.default.svc.cluster.local" in sans.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "10.96.0.1"]
    assert admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    assert admin.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "eep-admin"

    before = p.ca.cert.read_bytes(), p.apiserver.cert.read_bytes()
    pki.ensure_ca(p)
    pki.ensure_apiserver_cert(p, "10.96.0.1")
    assert (p.ca.cert.read_bytes(), p.apiserver.cert.read_bytes()) == before  # kept, not reissued


def test_spawn_detached_marks_logs_and_detaches(tmp_path: Path) -> None:
    state, log, pid_file = tmp_path / "state", tmp_path / "logs" / "x.log", tmp_path / "x.pid"
    log.parent.mkdir()
    log.write_text("before\n")
    script = 'echo "marker=$EEP_LOCALCLUSTER_STATE"; echo oops >&2; exec sleep 30'
    pid = procs.spawn_detached(["sh", "-c", script], log=log, pid_file=pid_file, state=state)
    try:
        assert procs.read_pid(pid_file) == pid
        assert os.getsid(pid) == pid  # its own session, so its own process group
        deadline = time.monotonic() + 5
        while "oops" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert log.read_text().splitlines() == ["before", f"marker={state}", "oops"]  # appended, both streams
        assert procs.alive(pid_file, state) and not procs.alive(pid_file, tmp_path / "other")
    finally:
        procs.stop(pid_file, state, grace_s=2.0)
    assert not procs.alive(pid_file, state)


def test_a_process_stays_ours_through_its_execs(tmp_path: Path) -> None:
    """Each exec empties /proc/<pid>/environ for a moment (pods start through `unshare`, `sh -c`, `exec`);
    read once, such a process looked gone in most of these starts."""
    state = tmp_path / "state"
    for i in range(20):
        pid_file = tmp_path / f"{i}.pid"
        argv = ["/usr/bin/env", "sh", "-c", "exec sleep 30"]
        pid = procs.spawn_detached(argv, log=tmp_path / "x.log", pid_file=pid_file, state=state)
        try:
            deadline = time.monotonic() + 0.05
            while time.monotonic() < deadline:
                assert procs.is_ours(pid, state)
        finally:
            procs.stop(pid_file, state, grace_s=2.0)
