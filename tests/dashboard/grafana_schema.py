"""Check a dashboard JSON against Grafana's own dashboard schema, as Grafana publishes it: the TypeScript
types of `@grafana/schema` (generated from the dashboard kind's CUE schema and the panel plugins' `panelcfg`
schemas), checked by the TypeScript compiler.

No JSON Schema of Grafana's dashboard is installable from a registry here (the foundation SDK ships Python
models only; Grafana's CUE needs the `cue` tool and Grafana's source), so the test writes the dashboard as a
TypeScript constant typed `Dashboard` and runs `tsc --noEmit`: a wrong type, a missing required field, a
value outside an enum, or an unknown key (TypeScript's excess-property check on object literals) fails it.
Each panel's `options` and `fieldConfig.defaults.custom` are checked against its plugin's `Options` and
`FieldConfig`. Who uses it: tests/dashboard/test_dashboard.py.

The packages come from the npm registry into `~/.cache/elastic-ep-operator/grafana-schema/<version>` once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

TYPESCRIPT = "5.9.3"
CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "elastic-ep-operator" / "grafana-schema"
)
# Panel type -> the folder of its panelcfg schema under raw/composable/.
PANEL_SCHEMAS = {"timeseries": "timeseries", "stat": "stat", "state-timeline": "statetimeline"}
# Fields of an annotation query that Grafana's Prometheus data source reads; the dashboard kind leaves an
# annotation query open (`...` in its CUE) for them, which the generated TypeScript cannot express.
PROMETHEUS_ANNOTATION = (
    "{ expr?: string; step?: string; titleFormat?: string; textFormat?: string; tagKeys?: string; "
    "useValueForTime?: boolean }"
)
# JSON has strings where the TypeScript types have string enums: map every string enum to its values.
JSON_OF = """
type JsonOf<T> = T extends string
  ? `${T}`
  : T extends ReadonlyArray<infer U>
    ? JsonOf<U>[]
    : T extends object
      ? { [K in keyof T]: JsonOf<T[K]> }
      : T;
"""


class SchemaUnavailable(RuntimeError):
    """npm is missing or could not install the packages."""


def install(version: str) -> Path:
    """node_modules with `@grafana/schema@version` and TypeScript, installed once.

    Raises SchemaUnavailable."""
    root = CACHE / version
    if (root / "node_modules" / "typescript" / "bin" / "tsc").exists() and (
        root / "node_modules" / "@grafana" / "schema" / "package.json"
    ).exists():
        return root
    npm = shutil.which("npm")
    if npm is None:
        raise SchemaUnavailable("npm not found (Debian package npm)")
    root.mkdir(parents=True, exist_ok=True)
    argv = [npm, "install", "--no-audit", "--no-fund", "--ignore-scripts", "--prefix", str(root)]
    result = subprocess.run(
        [*argv, f"typescript@{TYPESCRIPT}", f"@grafana/schema@{version}"],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise SchemaUnavailable(f"npm install failed: {result.stdout}{result.stderr}")
    return root


def _types(root: Path, pattern: str) -> Path:
    """The one declaration file matching `pattern` under the package's dist/ (its layout differs between
    Grafana versions: dist/esm/... in 11.x, dist/types/... in 13.x)."""
    dist = root / "node_modules" / "@grafana" / "schema" / "dist"
    found = sorted(p for p in dist.glob(pattern) if "/cjs/" not in str(p))
    if not found:
        raise SchemaUnavailable(f"no {pattern} in {dist}")
    return found[-1]


def _module(path: Path, root: Path) -> str:
    return "./" + str(path.relative_to(root)).removesuffix(".d.ts")


def typescript_source(dashboard: dict[str, Any], root: Path) -> str:
    """The dashboard and each panel's options as typed TypeScript constants (pure but for the glob)."""
    lines = [
        f'import type {{ Dashboard, AnnotationQuery }} from "{_module(_types(root, "*/index.d.ts"), root)}";'
    ]
    for plugin in sorted(set(PANEL_SCHEMAS.values())):
        cfg = _types(root, f"*/raw/composable/{plugin}/panelcfg/x/*.d.ts")
        lines.append(f'import type * as {plugin} from "{_module(cfg, root)}";')
    lines += [
        JSON_OF,
        f"type PrometheusAnnotation = JsonOf<AnnotationQuery> & {PROMETHEUS_ANNOTATION};",
        "type Board = Omit<JsonOf<Dashboard>, 'annotations'>"
        " & { annotations: { list: PrometheusAnnotation[] } };",
        f"export const dashboard: Board = {json.dumps(dashboard, indent=1)};",
    ]
    for panel in dashboard.get("panels", []):
        plugin = PANEL_SCHEMAS.get(panel["type"])
        if plugin is None:
            continue
        pid = panel["id"]
        lines.append(
            f"export const options{pid}: JsonOf<{plugin}.Options> = {json.dumps(panel.get('options', {}))};"
        )
        custom = panel.get("fieldConfig", {}).get("defaults", {}).get("custom")
        if custom is not None:
            lines.append(f"export const custom{pid}: JsonOf<{plugin}.FieldConfig> = {json.dumps(custom)};")
    return "\n".join(lines) + "\n"


def check(dashboard: dict[str, Any], version: str, workdir: Path) -> str:
    """tsc's complaints about `dashboard` against `@grafana/schema@version`; empty when it conforms."""
    root = install(version)
    source = root / f"check-{os.getpid()}.ts"
    source.write_text(typescript_source(dashboard, root))
    (workdir / "dashboard.ts").write_text(source.read_text())  # kept for reading a failure
    config = {
        "compilerOptions": {
            "strict": True,
            "noEmit": True,
            "module": "esnext",
            "moduleResolution": "node10",
            "target": "es2022",
            "skipLibCheck": True,
        },
        "files": [source.name],
    }
    tsconfig = root / f"tsconfig-{os.getpid()}.json"
    tsconfig.write_text(json.dumps(config))
    try:
        result = subprocess.run(
            ["node", str(root / "node_modules" / "typescript" / "bin" / "tsc"), "-p", str(tsconfig)],
            check=False,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=root,
        )
    finally:
        source.unlink(missing_ok=True)
        tsconfig.unlink(missing_ok=True)
    return (result.stdout + result.stderr).strip()
