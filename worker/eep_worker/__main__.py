"""`eep-worker serve [...]`: parse settings once, set up the loader environment, run the pod supervisor."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry

from eep_worker.settings import Settings, parse


def loader_env(prefix: Path, environ: dict[str, str]) -> dict[str, str]:
    """The variables to add for mooncake-cpu: `hack/setup-mooncake-cpu.sh` writes `<venv>/mooncake-cpu.env`
    (the CUDA stub libraries on LD_LIBRARY_PATH, MC_FORCE_TCP). Rank processes are spawned fresh
    interpreters, so setting them in the supervisor's environment before spawning is enough. Pure."""
    path = prefix / "mooncake-cpu.env"
    if not path.is_file():
        return {}
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.strip().partition("=")
        if not sep or key.startswith("#"):
            continue
        if key == "LD_LIBRARY_PATH":
            have = environ.get(key, "")
            missing = [p for p in value.split(":") if p and p not in have.split(":")]
            if missing:
                out[key] = ":".join([*missing, *([have] if have else [])])
        elif key not in environ:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    settings: Settings = parse(sys.argv[1:] if argv is None else argv, os.environ)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.backend == "mooncake-cpu":
        os.environ.update(loader_env(Path(sys.prefix), dict(os.environ)))
    from eep_worker.serve import Supervisor  # noqa: PLC0415

    return Supervisor(settings, CollectorRegistry()).run()


if __name__ == "__main__":
    sys.exit(main())
