#!/usr/bin/env bash
# Build pinned kube-apiserver, kube-controller-manager, kube-scheduler and etcd from their Go modules.
#
# Kubernetes publishes k8s.io/kubernetes as a Go module whose go.mod requires every staging module
# (k8s.io/api, k8s.io/apiserver, ...) at v0.0.0 and points them at ./staging with replace directives that
# do not apply to a module that depends on it. A small wrapper module fixes that: it requires
# k8s.io/kubernetes and replaces each staging module with its published v0.X.Y twin.
# Binaries are cached outside the repository, keyed by version; a second run is a no-op.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${EEP_CACHE:-$HOME/.cache/elastic-ep-operator}
out="$cache/control-plane/$KUBE_VERSION-etcd-$ETCD_VERSION/bin"
want=(kube-apiserver kube-controller-manager kube-scheduler etcd)
have=1; for b in "${want[@]}"; do [ -x "$out/$b" ] || have=0; done
if [ "$have" = 1 ]; then echo "$out"; exit 0; fi
mkdir -p "$out"
# Each long step runs under the progress reporter: its name, its measured duration, elapsed time (on stderr;
# stdout is this script's answer). Durations: EXPECTED in eep_localcluster/progress.py.
step() { python3 "$here/eep_localcluster/progress.py" --step "$1" -- "${@:2}" >&2; }
export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0
# The compile cache of these four binaries is about 3 GB and worthless once they exist: keep it beside them
# (an interrupted build resumes from it) and remove it at the end.
export GOCACHE="$cache/control-plane/gocache"
minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
staging_version="v0.${KUBE_VERSION#v1.}"

wrap="$cache/control-plane/wrapper-$KUBE_VERSION"
mkdir -p "$wrap"
if [ ! -f "$wrap/.resolved" ]; then
  echo ">> reading k8s.io/kubernetes@$KUBE_VERSION's go.mod" >&2
  kmod=$(cd "$wrap" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  {
    echo "module eep.local/control-plane"
    echo
    echo "go $(go env GOVERSION | sed 's/^go//; s/\.[0-9]*$//')"
    echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo
    echo "replace ("
    # every k8s.io module that Kubernetes itself requires at v0.0.0 is a staging module
    awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print "\t" $1 " => " $1 " '"$staging_version"'"}' "$kmod" | sort -u
    echo ")"
  } > "$wrap/go.mod"
  echo 'package main' > "$wrap/doc.go"
  echo ">> resolving modules (first run downloads ~1 GB of Go modules)" >&2
  (cd "$wrap" && step "go: resolve the Kubernetes modules" go get "k8s.io/kubernetes/cmd/kube-apiserver@$KUBE_VERSION" \
      "k8s.io/kubernetes/cmd/kube-controller-manager@$KUBE_VERSION" \
      "k8s.io/kubernetes/cmd/kube-scheduler@$KUBE_VERSION")
  touch "$wrap/.resolved"
fi
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
for b in kube-apiserver kube-controller-manager kube-scheduler; do
  if [ ! -x "$out/$b" ]; then
    (cd "$wrap" && step "go build $b" go build -trimpath -ldflags "$ldflags" -o "$out/$b.tmp" "k8s.io/kubernetes/cmd/$b")
    mv "$out/$b.tmp" "$out/$b"
  fi
done
if [ ! -x "$out/etcd" ]; then
  # etcd's server module carries its main package (server/main.go), but its go.mod has replace directives
  # (../api, ../client/...), so `go install module@version` refuses it. A wrapper module that requires it
  # resolves its siblings at the published versions instead.
  ewrap="$cache/control-plane/etcd-wrapper-$ETCD_VERSION"
  mkdir -p "$ewrap"
  if [ ! -f "$ewrap/.resolved" ]; then
    printf 'module eep.local/etcd\n\ngo %s\n' "$(go env GOVERSION | sed 's/^go//; s/\.[0-9]*$//')" > "$ewrap/go.mod"
    echo 'package main' > "$ewrap/doc.go"
    (cd "$ewrap" && step "go: resolve the etcd modules" go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION")
    touch "$ewrap/.resolved"
  fi
  (cd "$ewrap" && step "go build etcd" go build -trimpath -ldflags "-s -w" -o "$out/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$out/etcd.tmp" "$out/etcd"
fi
rm -rf "$GOCACHE"
echo "$out"
