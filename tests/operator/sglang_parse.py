"""Parse launch_server command lines with an installed SGLang release's own parser.

Run by tests/operator/sglang_releases.py with the release environment's python (standard library and
SGLang only; not imported by the tests). Reads a JSON list of argument lists on stdin; writes one JSON line
`{"version": sglang.__version__, "results": [{"ok", "error", "args"}, ...]}`. Each argument list goes
through a fresh `argparse.ArgumentParser` filled by `ServerArgs.add_cli_args` (what `launch_server` does),
then `ServerArgs.from_cli_args`. `ServerArgs`' later resolution step needs a GPU and is not run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import warnings

warnings.filterwarnings("ignore")

import sglang  # noqa: E402
from sglang.srt.server_args import ServerArgs  # noqa: E402


def _plain(value: object) -> object:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return str(value)
    return value


def verdict(argv: list[str]) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="launch_server")
    ServerArgs.add_cli_args(parser)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            namespace = parser.parse_args(argv)
    except SystemExit:
        lines = [line for line in printed.getvalue().splitlines() if "error:" in line]
        return {"ok": False, "error": lines[-1] if lines else printed.getvalue()[-500:], "args": {}}
    args = {k: _plain(v) for k, v in vars(namespace).items()}
    try:
        ServerArgs.from_cli_args(namespace)
    except Exception as e:  # the record refuses a value the parser let through
        return {"ok": False, "error": f"ServerArgs.from_cli_args: {e!r}", "args": args}
    return {"ok": True, "error": "", "args": args}


def main() -> None:
    argvs = json.load(sys.stdin)
    print(json.dumps({"version": sglang.__version__, "results": [verdict(a) for a in argvs]}))


if __name__ == "__main__":
    main()
