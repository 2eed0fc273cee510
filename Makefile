# The two commands a new machine needs: `make dev` (set up and run) and `make test`.
PYTHON ?= python3
VENV := .venv
SHARED_MODEL := $(abspath ../shared/models/centernet-coco-tfhub-style)
# The browser tests inject axe-core (accessibility rules) into every page they check.
AXE_VERSION := 4.10.3
AXE := .cache/axe/node_modules/axe-core/axe.min.js

.PHONY: dev test setup test-setup lint bench knative-setup test-knative

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

setup: $(VENV)/bin/python
	$(VENV)/bin/pip install -q -c requirements.lock -e '.[detector]'

# Offline machines cannot reach TF Hub: use the shared SavedModel (same signature) when present.
dev: setup
	@if [ -z "$$IMAGEREC_DETECTOR_MODEL" ] && [ -d "$(SHARED_MODEL)" ]; then \
	  export IMAGEREC_DETECTOR_MODEL="$(SHARED_MODEL)"; fi; \
	exec $(VENV)/bin/imagerec dev

test-setup: $(VENV)/bin/python
	@command -v chromium >/dev/null && command -v exiftool >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    chromium libimage-exiftool-perl >/dev/null; }
	@command -v npm >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null; }
	@test -f $(AXE) || npm install -s --no-audit --no-fund --prefix .cache/axe axe-core@$(AXE_VERSION)
	sh tests/start-services.sh
	$(VENV)/bin/pip install -q -c requirements.lock -e '.[detector,bench,test]'
	$(VENV)/bin/pip install -q -c requirements.lock --ignore-requires-python pykustomize==0.1.4

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The suite, then the real-Knative harness's tests (collected only with IMAGEREC_KNATIVE=1).
test: test-setup knative-setup lint
	$(VENV)/bin/python -m pytest
	IMAGEREC_KNATIVE=1 $(VENV)/bin/python -m pytest -p no:cacheprovider tests/knative

# The real-Knative harness (docs/knative-harness.md): etcd, kube-apiserver, Knative Eventing,
# Serving's webhook and kn, built once per machine from the Go module proxy into
# ${IMAGEREC_KNATIVE_CACHE:-~/.cache/imagerec-knative}; nftables gives its network namespaces
# the Service ports.
knative-setup:
	@command -v nft >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nftables >/dev/null; }
	sh tests/knative/build.sh

test-knative: test-setup knative-setup
	IMAGEREC_KNATIVE=1 $(VENV)/bin/python -m pytest -p no:cacheprovider tests/knative

bench: setup
	$(VENV)/bin/pip install -q -c requirements.lock -e '.[detector,bench]'
	$(VENV)/bin/python benchmarks/run.py
