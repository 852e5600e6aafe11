"""Real SGLang releases for the parser tests: one cached environment per release, and a call into its parser.

`environment(release)` returns `$EEP_CACHE/sglang/<release>-<hash>/` (EEP_CACHE defaults to
~/.cache/elastic-ep-operator), a virtualenv without pip that holds `sglang==<release>` and the packages
`sglang.srt.server_args` imports, each installed with `--no-deps` at the version pinned below. It is built
once (under a file lock, in a temporary folder renamed into place when complete, so an interrupted build is
never used); later runs find it and install nothing. A change of the pins builds a new one and removes the
release's old one.

torch is the exception: SGLang imports it at module level (and triton, through `sglang.srt.utils.common`),
but a second copy would be 2.8 GB of wheels. The tests take the project virtualenv's torch
(`make venv-worker`): `torch_path(dir)` links torch and the distributions it depends on into `dir`, which the
parse puts on PYTHONPATH. Nothing else of the project's virtualenv is visible to the release.

`parse(env, torch_dir, argvs)` runs `sglang_parse.py` with the release's python once for a whole list of
command lines (importing `sglang.srt.server_args` takes 5-30 s) and returns one result per command line.

Who uses it: tests/operator/test_sglang_parser.py. The pins were found by trying (docs/sglang.md, "What
SGLang's parser needs"): install sglang alone, import `sglang.srt.server_args`, add the missing module, again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PARSE_SCRIPT = HERE / "sglang_parse.py"

COMMON = (
    "aiohappyeyeballs==2.7.1",
    "aiohttp==3.14.5",
    "aiosignal==1.4.0",
    "anyio==4.16.0",
    "attrs==26.1.0",
    "certifi==2026.10.19.post1",
    "frozenlist==1.8.0",
    "idna==3.20",
    "ipython==9.18.1",
    "msgspec==0.23.0",
    "multidict==7.2.1",
    "numpy==2.4.6",
    "orjson==3.13.0",
    "packaging==26.4",
    "pillow==13.0.0",
    "propcache==0.5.4",
    "psutil==7.2.2",
    "pybase64==1.5.1",
    "pydantic==2.14.4",
    "pydantic-core==2.50.5",
    "pygments==2.21.0",
    "pyzmq==27.3.0",
    "requests==2.34.2",
    "starlette==1.10.0",
    "tqdm==4.70.1",
    "traitlets==5.16.1",
    "typing-inspection==0.4.5",
    "urllib3==2.8.0",
    "yarl==1.25.1",
)
"""What `sglang.srt.server_args` of 0.5.23 imports besides torch: 29 small packages."""

REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "0.5.20": (
        "sglang==0.5.20",
        *COMMON,
        # 0.5.20 imports more at module level: xgrammar (function-call parsing) pulls transformers and
        # tvm-ffi, the OpenAI-compatible layer pulls openai, `utils.common` imports torchvision.
        "annotated-types==0.8.0",
        "apache-tvm-ffi==0.1.15.post2",
        "h11==0.16.0",
        "httpcore2==2.16.2",
        "httpx2==2.16.2",
        "huggingface-hub==2.4.0",
        "openai==3.57.0",
        "partial-json-parser==0.2.1.1.post7",
        "pyyaml==6.0.4",
        "regex==2026.11.19",
        "safetensors==0.8.0",
        "sniffio==1.3.1",
        "torchvision==0.28.0",  # the release built for the project's torch 2.13
        "transformers==5.24.0",
        "truststore==0.10.5",
        "xgrammar==0.2.9",
    ),
    "0.5.23": ("sglang==0.5.23", *COMMON),
}
"""Per release: the exact distributions of its environment (installed with `--no-deps`)."""


def cache_root() -> Path:
    """`$EEP_CACHE/sglang` (EEP_CACHE defaults to ~/.cache/elastic-ep-operator, like the Makefile's)."""
    base = os.environ.get("EEP_CACHE") or str(Path.home() / ".cache" / "elastic-ep-operator")
    return Path(base) / "sglang"


def _fingerprint(release: str) -> str:
    text = "\n".join([sys.version.split()[0], *REQUIREMENTS[release]])
    return hashlib.sha256(text.encode()).hexdigest()[:10]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Built:
    """An environment and what obtaining it cost this run (0 when it was already there)."""

    path: Path
    seconds: float
    built: bool


def environment(release: str) -> Built:
    """The cached environment of `release`, built when missing (needs the package index the first time)."""
    root = cache_root()
    env = root / f"{release}-{_fingerprint(release)}"
    started = time.monotonic()
    if (env / ".complete").exists():
        return Built(env, time.monotonic() - started, built=False)
    with _locked(root / ".lock"):
        if (env / ".complete").exists():  # another session built it while we waited
            return Built(env, time.monotonic() - started, built=False)
        tmp = root / f".{env.name}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        # The project's interpreter (SGLang's wheels are cp311, like the torch taken from the project).
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp)], check=True, timeout=120)
        pip = [sys.executable, "-m", "pip", "--python", str(tmp / "bin" / "python")]
        install = [
            *pip, "install", "--no-deps", "--no-compile", "--only-binary", ":all:",
            "--no-cache-dir", "--disable-pip-version-check", "--quiet", *REQUIREMENTS[release],
        ]  # fmt: skip
        done = subprocess.run(install, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeError(f"installing SGLang {release} failed:\n{done.stdout}\n{done.stderr}")
        (tmp / ".complete").write_text("\n".join(REQUIREMENTS[release]) + "\n")
        for old in root.glob(f"{release}-*"):
            shutil.rmtree(old, ignore_errors=True)
        tmp.rename(env)
    return Built(env, time.monotonic() - started, built=True)


_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _requires(dist: metadata.Distribution) -> list[str]:
    """Names of the distributions `dist` requires, optional extras left out."""
    names = []
    for req in dist.requires or []:
        marker = req.split(";", 1)[1] if ";" in req else ""
        match = _NAME.match(req)
        if match and "extra" not in marker:
            names.append(match.group(1))
    return names


def torch_path(dest: Path) -> Path:
    """Fill `dest` with links to this interpreter's torch and every distribution it depends on (the ones that
    are installed; a platform marker may leave some out) and return it."""
    try:
        metadata.distribution("torch")
    except metadata.PackageNotFoundError as e:
        raise RuntimeError(
            "the SGLang parser tests take torch from the project venv: run `make venv-worker`"
        ) from e
    dest.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    todo = ["torch"]
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        site = Path(str(dist.locate_file("")))
        tops = {f.parts[0] for f in dist.files or [] if f.parts}
        for top in tops - {"..", "__pycache__"}:
            if top.endswith(".pth"):
                continue  # read only from site-packages, never from PYTHONPATH
            link = dest / top
            if not link.exists() and (site / top).exists():
                link.symlink_to(site / top)
        todo += _requires(dist)
    return dest


@dataclass(frozen=True)
class Parsed:
    """SGLang's verdict on one command line."""

    ok: bool
    """Its parser accepted the arguments and `ServerArgs.from_cli_args` built the record."""
    error: str
    """What the parser printed (argparse's `error: ...` line), or the exception."""
    args: dict[str, Any]
    """The parsed namespace, by dest (values as JSON; others as their str)."""


def parse(env: Path, torch_dir: Path, argvs: Sequence[Sequence[str]]) -> tuple[str, list[Parsed]]:
    """SGLang's version as it reports itself, and the verdict on each argv (launch_server's arguments)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    environ |= {"PYTHONPATH": str(torch_dir), "PYTHONNOUSERSITE": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [str(env / "bin" / "python"), str(PARSE_SCRIPT)],
        input=json.dumps([list(a) for a in argvs]),
        capture_output=True,
        text=True,
        env=environ,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{PARSE_SCRIPT.name} failed in {env}:\n{done.stderr[-6000:]}")
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    return answer["version"], [Parsed(**r) for r in answer["results"]]
