# syntax=docker/dockerfile:1
# Two images from one file:
#   docker build --target operator -t ghcr.io/elastic-ep-operator/operator:0.1.0 .
#   docker build --target worker   -t ghcr.io/elastic-ep-operator/worker:0.1.0 .
# Bases are pinned by tag and multi-platform index digest. Each image installs only the distributions that run in
# it (docs/architecture.md, "Map: folders, what each owns, what it may import"): the operator image contract +
# operator, the worker image contract + worker[gpu]; neither carries the local-cluster tooling, the test kit or
# the demo.
# tests/chart/test_dockerfile.py keeps this in step with the folders' pyproject files.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04@sha256:c3fde347d52d578c84fd644bc177bc7ec333feaf11550d990da4084d7612e4c7

# ---------------------------------------------------------------------------------------------------------------
# operator: kopf + the Kubernetes client; no torch, no Mooncake.
# ---------------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS operator-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/eep
WORKDIR /src
COPY contract ./contract
COPY operator ./operator
RUN /opt/eep/bin/pip install ./contract ./operator

FROM ${PYTHON_IMAGE} AS operator
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="elastic-ep-operator" \
      org.opencontainers.image.description="Kubernetes operator that recovers a failed expert-parallel rank in place" \
      org.opencontainers.image.source="https://github.com/elastic-ep-operator/elastic-ep-operator" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
# A passwd entry: kopf names its peering identity after the user (getpass.getuser()).
RUN groupadd --gid 65532 eep && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /tmp eep
COPY --from=operator-build /opt/eep /opt/eep
ENV PATH=/opt/eep/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp
USER 65532:65532
EXPOSE 9090 8081
ENTRYPOINT ["eep-operator"]
CMD ["run", "--all-namespaces"]

# ---------------------------------------------------------------------------------------------------------------
# worker: CUDA runtime, torch, Mooncake (CUDA 13 build), the eep-worker runtime.
# ---------------------------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS worker-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/eep
WORKDIR /src
COPY contract ./contract
COPY worker ./worker
RUN /opt/eep/bin/pip install ./contract './worker[gpu]'

FROM ${CUDA_IMAGE} AS worker
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="elastic-ep-worker" \
      org.opencontainers.image.description="Elastic EP worker runtime: torch + Mooncake, rejoins a running group" \
      org.opencontainers.image.source="https://github.com/elastic-ep-operator/elastic-ep-operator" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
# Runtime libraries Mooncake's transfer engine loads (RDMA verbs, NUMA, curl); no compilers.
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 libibverbs1 ibverbs-providers libnuma1 libcurl4 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 eep && useradd --uid 65532 --gid 65532 --create-home --home-dir /home/eep eep
COPY --from=worker-build /opt/eep /opt/eep
ENV PATH=/opt/eep/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 65532:65532
ENTRYPOINT ["eep-worker"]
CMD ["serve"]
