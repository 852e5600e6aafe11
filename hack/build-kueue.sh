#!/usr/bin/env bash
# Build the pinned Kueue manager from its Go module and copy its CRDs and webhook manifests beside it.
#
# sigs.k8s.io/kueue's go.mod has no replace directives, so a wrapper module that requires it resolves its
# dependencies as Kueue pins them (the same layout as build-control-plane.sh). The module zip carries the
# kustomize sources the release YAML is built from: config/components/crd/bases/*.yaml (the CRDs, complete)
# and config/components/webhook/manifests.yaml (the webhook configurations, with a Service clientConfig that
# eep_localcluster/kueue.py rewrites to a URL). They are copied as they are; nothing here runs kustomize.
# Output, cached and keyed by version (a second run is a no-op):
#   $EEP_CACHE/kueue/<version>/bin/kueue
#   $EEP_CACHE/kueue/<version>/crds/*.yaml
#   $EEP_CACHE/kueue/<version>/webhook/manifests.yaml
# stdout: the version directory.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${EEP_CACHE:-$HOME/.cache/elastic-ep-operator}
out="$cache/kueue/$KUEUE_VERSION"
if [ -x "$out/bin/kueue" ] && [ -f "$out/webhook/manifests.yaml" ] && [ -f "$out/crds/.complete" ]; then
  echo "$out"
  exit 0
fi
mkdir -p "$out/bin" "$out/crds" "$out/webhook"
# Each long step under the progress reporter, on stderr (stdout is this script's answer).
step() { python3 "$here/eep_localcluster/progress.py" --step "$1" -- "${@:2}" >&2; }
export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0
# The compile cache is worthless once the binary exists: keep it beside it (an interrupted build resumes
# from it) and remove it at the end.
export GOCACHE="$cache/kueue/gocache"

wrap="$cache/kueue/wrapper-$KUEUE_VERSION"
mkdir -p "$wrap"
if [ ! -f "$wrap/.resolved" ]; then
  {
    echo "module eep.local/kueue"
    echo
    echo "go $(go env GOVERSION | sed 's/^go//; s/\.[0-9]*$//')"
  } > "$wrap/go.mod"
  echo 'package main' > "$wrap/doc.go"
  (cd "$wrap" && step "go: resolve the Kueue modules" go get "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION")
  touch "$wrap/.resolved"
fi
if [ ! -x "$out/bin/kueue" ]; then
  # Kueue's Makefile stamps the version the same way (its LD_FLAGS); the manager logs it at start.
  ldflags="-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION"
  (cd "$wrap" && step "go build kueue" go build -trimpath -ldflags "$ldflags" -o "$out/bin/kueue.tmp" sigs.k8s.io/kueue/cmd/kueue)
  mv "$out/bin/kueue.tmp" "$out/bin/kueue"
fi
src=$(cd "$wrap" && go list -m -f '{{.Dir}}' sigs.k8s.io/kueue)
cp "$src"/config/components/crd/bases/*.yaml "$out/crds/"
chmod u+w "$out"/crds/*.yaml
touch "$out/crds/.complete"
cp "$src/config/components/webhook/manifests.yaml" "$out/webhook/manifests.yaml"
chmod u+w "$out/webhook/manifests.yaml"
rm -rf "$GOCACHE"
echo "$out"
