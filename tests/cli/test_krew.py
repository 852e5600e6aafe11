"""deploy/krew/eep.yaml, krew's Plugin manifest for `kubectl eep`: its fields, and that its sha256 is the one
of the archive a release publishes: deploy/krew/kubectl-eep (a shim that runs the plugin from the eep-operator
Python package) packed reproducibly by `archive()` (fixed names, modes and times), so a changed shim fails
here until the manifest is updated."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
KREW = ROOT / "deploy" / "krew"


def archive(shim: Path = KREW / "kubectl-eep", license_file: Path = ROOT / "LICENSE") -> bytes:
    """kubectl-eep.tar.gz as the release uploads it: the shim (0755) and the license, if the repository has
    one, with zeroed owners and times, gzip without a timestamp. Pure but for reading the files."""
    members = [("kubectl-eep", shim.read_bytes(), 0o755)]
    if license_file.exists():
        members.append(("LICENSE", license_file.read_bytes(), 0o644))
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data, mode in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def manifest() -> dict[str, object]:
    doc = yaml.safe_load((KREW / "eep.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def test_manifest_is_a_krew_plugin() -> None:
    doc = manifest()
    assert doc["apiVersion"] == "krew.googlecontainertools.github.com/v1alpha2"
    assert doc["kind"] == "Plugin"
    assert doc["metadata"] == {"name": "eep"}
    spec = doc["spec"]
    assert isinstance(spec, dict)
    assert str(spec["version"]).startswith("v")
    assert spec["homepage"].startswith("https://")
    assert len(spec["shortDescription"]) <= 50
    assert "pip install eep-operator" in spec["description"]
    for platform in spec["platforms"]:
        assert platform["bin"] == "kubectl-eep"
        (expression,) = platform["selector"]["matchExpressions"]
        assert expression == {"key": "os", "operator": "In", "values": ["linux", "darwin"]}
        assert platform["uri"].endswith("/kubectl-eep.tar.gz")
        assert {f["from"] for f in platform["files"]} <= {"kubectl-eep", "LICENSE"}


def test_manifest_sha256_is_the_reproducible_archive_of_the_shim() -> None:
    digest = hashlib.sha256(archive()).hexdigest()
    for platform in manifest()["spec"]["platforms"]:  # type: ignore[index]
        assert platform["sha256"] == digest, (
            f"deploy/krew/kubectl-eep changed: set sha256 in deploy/krew/eep.yaml to {digest}"
        )


def test_shim_runs_the_plugin_or_says_what_is_missing(tmp_path: Path) -> None:
    shim = KREW / "kubectl-eep"
    assert os.access(shim, os.X_OK)
    ok = subprocess.run(
        [str(shim), "--help"],
        env={**os.environ, "EEP_PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0 and "usage: kubectl eep" in ok.stdout, ok.stderr
    bare = tmp_path / "python-without-eep"
    bare.write_text("#!/bin/sh\nexit 1\n")
    bare.chmod(0o755)
    missing = subprocess.run(
        [str(shim), "status", "x"],
        env={**os.environ, "EEP_PYTHON": str(bare)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 3 and "pip install eep-operator" in missing.stderr
