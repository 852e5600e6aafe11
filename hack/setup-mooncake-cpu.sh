#!/usr/bin/env bash
# Install the worker runtime (torch + Mooncake, CPU backend "mooncake-cpu") into $VENV on a machine with no GPU.
#
# Called by `make venv-worker`. mooncake-transfer-engine 0.3.13.post1 ships a prebuilt torch backend that links
# CUDA libraries a CPU machine lacks. We build stub libraries for exactly the symbols it needs:
#   - libcuda.so.1 (driver API): every cu* symbol that libmooncake_pg.so imports returns CUDA_ERROR_NO_DEVICE (100);
#     the CPU path never calls them, and if something did, it gets "no device" instead of a crash.
#   - libc10_cuda.so / libtorch_cuda.so: only when torch is a CPU build (they ship with the CUDA build); the
#     c10::cuda symbols abort() because nothing on the CPU path may call them.
# Writes $VENV/mooncake-cpu.env (shell syntax: LD_LIBRARY_PATH, MC_FORCE_TCP); `eep-worker` and the tests read it.
# A second run reinstalls nothing that is already there.
set -euo pipefail
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
CUDART_SPEC=${CUDART_SPEC:-nvidia-cuda-runtime-cu12==12.9.79}
here=$(cd "$(dirname "$0")/.." && pwd)
VENV=$(cd "$here" && mkdir -p "$VENV" && cd "$VENV" && pwd)
STUB="$VENV/mc_stubs"
PY="$VENV/bin/python"

need_pkgs=()
for p in libibverbs1 ibverbs-providers libnuma1 libcurl4 gcc binutils; do
  dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo ">> apt: ${need_pkgs[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

test -x "$PY" || python3 -m venv "$VENV"
# PyPI's torch brings its CUDA libraries: about 2.8 GB of wheels, 5.5 GB once installed. Say so up front when the
# disk looks too small, so that a failure further down reads as what it is. No pip cache: it would keep a second
# copy of every wheel.
need_gb=9
for dir in "$VENV" "${TMPDIR:-/tmp}"; do
  free_gb=$(df -Pk "$dir" | awk 'NR==2 {print int($4 / 1048576)}')
  if [ "$free_gb" -lt "$need_gb" ]; then
    echo ">> warning: $free_gb GB free under $dir; installing torch $TORCH_SPEC with its CUDA libraries" \
         "needs about $need_gb GB there (pip stops with 'No space left on device' otherwise)" >&2
  fi
done
echo ">> pip: worker[cpu] ($TORCH_SPEC) + $CUDART_SPEC" >&2
python3 "$here/hack/eep_localcluster/progress.py" --step "pip: the worker runtime (torch, mooncake)" -- \
  "$PY" -m pip install -q --no-cache-dir "$TORCH_SPEC" -e "$here/contract" -e "$here/worker[cpu]" "$CUDART_SPEC"

SP=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
MC="$SP/mooncake"
mkdir -p "$STUB"
nm -D --undefined-only "$MC/libmooncake_pg.so" \
  | awk '$2 ~ /^cu[A-Z]/ {sub(/@.*/, "", $2); print "int " $2 "(void) { return 100; }"}' | sort -u >"$STUB/cuda.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$STUB/libcuda.so.1" "$STUB/cuda.c"
if [ ! -e "$SP/torch/lib/libc10_cuda.so" ]; then
  { echo '#include <stdlib.h>'
    nm -D --undefined-only "$MC"/pg_2_13_0*.so | awk '$2 ~ /3c104cuda/ {print "void " $2 "(void) { abort(); }"}' | sort -u
  } >"$STUB/c10_cuda.c"
  gcc -shared -fPIC -o "$STUB/libc10_cuda.so" "$STUB/c10_cuda.c"
  echo >"$STUB/empty.c"
  gcc -shared -fPIC -o "$STUB/libtorch_cuda.so" "$STUB/empty.c"
fi

cat >"$VENV/mooncake-cpu.env" <<EOF
# Written by hack/setup-mooncake-cpu.sh: the loader environment of the mooncake-cpu backend on this machine.
LD_LIBRARY_PATH=$STUB:$SP/nvidia/cuda_runtime/lib
MC_FORCE_TCP=true
EOF

# Prove it loads: import the backend with the environment just written.
env LD_LIBRARY_PATH="$STUB:$SP/nvidia/cuda_runtime/lib" MC_FORCE_TCP=true \
  "$PY" -c 'import torch; from mooncake import pg; assert hasattr(pg, "MooncakeBackendOptions")'
echo ">> mooncake-cpu ready; environment in $VENV/mooncake-cpu.env" >&2
