"""The loader environment of the mooncake-cpu backend: what `hack/setup-mooncake-cpu.sh` wrote into
`<venv>/mooncake-cpu.env` (the CUDA stub libraries on LD_LIBRARY_PATH, MC_FORCE_TCP).

Who uses it: `eep_worker.__main__` (applied before the rank processes are spawned) and the test kit
(`eep_testkit.envfile`, for benchmarks that spawn ranks themselves). Standard library only, so a GPU machine
that carries just torch and mooncake can import it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["loader_env", "parse_env"]


def parse_env(text: str) -> dict[str, str]:
    """The assignments of a shell-style `KEY=VALUE` file (`<venv>/mooncake-cpu.env`). Blank lines and `#`
    comments are skipped, whitespace around the key and the value is stripped, values are literal (no quotes
    removed, no `$` expansion). Pure. The test kit reads env files with this too (`eep_testkit.envfile`)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            out[key.strip()] = value.strip()
    return out


def loader_env(prefix: Path, environ: dict[str, str]) -> dict[str, str]:
    """The variables to add for mooncake-cpu: `hack/setup-mooncake-cpu.sh` writes `<venv>/mooncake-cpu.env`
    (the CUDA stub libraries on LD_LIBRARY_PATH, MC_FORCE_TCP). Rank processes are spawned fresh
    interpreters, so setting them in the supervisor's environment before spawning is enough. Pure."""
    path = prefix / "mooncake-cpu.env"
    if not path.is_file():
        return {}
    out: dict[str, str] = {}
    for key, value in parse_env(path.read_text()).items():
        if key == "LD_LIBRARY_PATH":
            have = environ.get(key, "")
            missing = [p for p in value.split(":") if p and p not in have.split(":")]
            if missing:
                out[key] = ":".join([*missing, *([have] if have else [])])
        elif key not in environ:
            out[key] = value
    return out
