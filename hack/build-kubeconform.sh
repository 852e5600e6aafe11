#!/usr/bin/env bash
# Build kubeconform from its Go module and generate, offline, the JSON schemas it validates against.
#
# Only PyPI, the Go module proxy, npm and Debian are reachable, so nothing is fetched from GitHub at run time:
#  - kubeconform: `go install github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION`.
#  - Kubernetes' schemas: the swagger.json of the k8s.io/kubernetes@$KUBE_VERSION module (already in GOMODCACHE
#    after `make control-plane`, downloaded otherwise), converted by PyPI's openapi2jsonschema with
#    --expanded --kubernetes --stand-alone --strict, which is how kubeconform's default schema repository
#    (yannh/kubernetes-json-schema) is made. openapi2jsonschema 0.9.1 pins PyYAML<6, and PyYAML 5.x has no
#    wheel for Python >= 3.11 and no longer builds from source with Cython 3, so it is installed --no-deps
#    beside its other pins and PyYAML 6 (it calls only `yaml.load(..., Loader=yaml.SafeLoader)`).
#    openapi2jsonschema declines the CustomResourceDefinition kinds (their JSONSchemaProps is recursive).
#  - Prometheus Operator's ServiceMonitor and PrometheusRule (the chart renders them): the CRDs in the
#    github.com/prometheus-operator/prometheus-operator module's example/prometheus-operator-crd/, converted by
#    kubeconform's own scripts/openapi2jsonschema.py from its module zip, which is also copied out for
#    `python -m eep_localcluster.manifests` to convert our own CRD from crds/ at validation time.
#
# Everything lands in $EEP_CACHE/kubeconform/$KUBECONFORM_VERSION; the script prints that directory:
#   bin/kubeconform
#   openapi2jsonschema.py                         kubeconform's CRD converter
#   venv/                                         python + PyYAML (+ openapi2jsonschema) to run the converters
#   schemas/kubernetes/$KUBE_VERSION-standalone-strict/<kind>-<group>-<version>.json
#                                                 kubeconform's default layout: `-schema-location schemas/kubernetes`
#   schemas/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION/<group>/<kind>_<version>.json
# A second run only checks and exits.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
# The Prometheus Operator release whose CRDs the chart's ServiceMonitor and PrometheusRule are checked against
# (monitoring.coreos.com/v1 has been stable across releases); the version the Go proxy here serves.
PROMETHEUS_OPERATOR_VERSION=v0.85.0
OPENAPI2JSONSCHEMA_VERSION=0.9.1
cache=${EEP_CACHE:-$HOME/.cache/elastic-ep-operator}
root="$cache/kubeconform/$KUBECONFORM_VERSION"
k8s_schemas="$root/schemas/kubernetes/$KUBE_VERSION-standalone-strict"
prom_schemas="$root/schemas/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION"
step() { python3 "$here/eep_localcluster/progress.py" --step "$1" -- "${@:2}" >&2; }
export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0

# The directory of a Go module's source, downloaded into GOMODCACHE when missing (run outside any module).
nomod=$(mktemp -d)
trap 'rm -rf "$nomod"' EXIT
module_dir() {
  (cd "$nomod" && go mod download -json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
}

mkdir -p "$root/bin"
if [ ! -x "$root/bin/kubeconform" ]; then
  step "go build kubeconform" env GOBIN="$root/bin.tmp" \
    go install -trimpath -ldflags "-s -w" "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
  mv "$root/bin.tmp/kubeconform" "$root/bin/kubeconform"
  rmdir "$root/bin.tmp"
fi
if [ ! -f "$root/openapi2jsonschema.py" ]; then
  src=$(module_dir "github.com/yannh/kubeconform@$KUBECONFORM_VERSION")
  cp "$src/scripts/openapi2jsonschema.py" "$root/openapi2jsonschema.py.tmp"
  mv "$root/openapi2jsonschema.py.tmp" "$root/openapi2jsonschema.py"
fi
if [ ! -x "$root/venv/bin/openapi2jsonschema" ]; then
  rm -rf "$root/venv"
  python3 -m venv "$root/venv"
  step "pip: openapi2jsonschema" bash -c "
    '$root/venv/bin/python' -m pip install -q 'click>=7,<8' 'jsonref>=0.2,<0.3' 'colorama>=0.4.1,<0.5' 'PyYAML>=6,<7' &&
    '$root/venv/bin/python' -m pip install -q --no-deps 'openapi2jsonschema==$OPENAPI2JSONSCHEMA_VERSION'"
fi
if [ ! -f "$k8s_schemas/.complete" ]; then
  spec="$(module_dir "k8s.io/kubernetes@$KUBE_VERSION")/api/openapi-spec/swagger.json"
  rm -rf "$k8s_schemas"
  mkdir -p "$k8s_schemas"
  # openapi2jsonschema resolves its $refs against the working directory: the output path must be relative.
  (cd "$(dirname "$k8s_schemas")" &&
    step "openapi2jsonschema: the Kubernetes schemas" bash -c \
      "'$root/venv/bin/openapi2jsonschema' --expanded --kubernetes --stand-alone --strict \
         -o '$(basename "$k8s_schemas")' '$spec' > '$k8s_schemas/.log' 2>&1 || { tail -20 '$k8s_schemas/.log'; exit 1; }")
  for kind in deployment-apps-v1 pod-v1 service-v1 poddisruptionbudget-policy-v1 clusterrole-rbac-v1; do
    [ -s "$k8s_schemas/$kind.json" ] || { echo "openapi2jsonschema wrote no $kind.json" >&2; exit 1; }
  done
  touch "$k8s_schemas/.complete"
fi
if [ ! -f "$prom_schemas/.complete" ]; then
  crds="$(module_dir "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION")/example/prometheus-operator-crd"
  rm -rf "$prom_schemas"
  mkdir -p "$prom_schemas/monitoring.coreos.com"
  # The converter writes into the working directory; DENY_ROOT_ADDITIONAL_PROPERTIES makes the top level strict too.
  (cd "$prom_schemas/monitoring.coreos.com" &&
    FILENAME_FORMAT='{kind}_{version}' DENY_ROOT_ADDITIONAL_PROPERTIES=1 "$root/venv/bin/python" \
      "$root/openapi2jsonschema.py" "$crds/monitoring.coreos.com_servicemonitors.yaml" \
      "$crds/monitoring.coreos.com_prometheusrules.yaml" >/dev/null)
  touch "$prom_schemas/.complete"
fi
"$root/bin/kubeconform" -v >/dev/null
echo "$root"
