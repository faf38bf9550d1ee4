# lumiserve developer commands. `make test` sets up everything it needs on a fresh machine.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv demo test lint deploy-check protos check-protos buf clean

# The virtual environment: CPU torch first (the build that lies on this machine's disk; any other
# torch requirement makes pip fetch a multi-GB CUDA build), then lumiserve with every extra.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[all,dev]"
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest

# The main job: the embedded stack serving a request end to end (see scripts/demo.sh).
demo: venv
	bash scripts/demo.sh

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

buf: node_modules/.installed
	npx buf lint
	npx buf format --diff --exit-code

protos: venv
	$(PY) scripts/gen_protos.py

check-protos: venv
	$(PY) scripts/gen_protos.py --check

lint: venv buf check-protos
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Offline validation of deploy/: kustomize | kubernetes-validate, hadolint, yamllint, contract tests.
deploy-check: venv
	bash scripts/validate_deploy.sh

clean:
	rm -rf $(VENV) node_modules .pytest_cache .ruff_cache
