"""`eep-worker serve [...]`: parse settings once, set up the loader environment, run the pod supervisor."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry

from eep_worker.loader import loader_env
from eep_worker.settings import Settings, parse


def main(argv: list[str] | None = None) -> int:
    settings: Settings = parse(sys.argv[1:] if argv is None else argv, os.environ)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.backend == "mooncake-cpu":
        os.environ.update(loader_env(Path(sys.prefix), dict(os.environ)))
    from eep_worker.serve import Supervisor  # noqa: PLC0415

    return Supervisor(settings, CollectorRegistry()).run()


if __name__ == "__main__":
    sys.exit(main())
