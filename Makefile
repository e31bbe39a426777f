# totes: incremental ETL of ToteSys into a star-schema warehouse.
# `make run` and `make test` work on a fresh machine: each installs what it needs into .venv.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
DEV_INSTALLED := $(VENV)/.dev-installed
# The benchmark's comparison (dlt, connectorx, ADBC) lives apart from totes' own packages.
DLT_VENV := .venv-dlt
DLT_INSTALLED := $(DLT_VENV)/.installed
# Mermaid (npm), which draws the docs site's diagrams (make docs).
MERMAID := build/docs-node/node_modules/mermaid/dist/mermaid.min.js

.PHONY: help run test test-fast lint-imports typecheck install-requirements install-dev-tools \
	run-pytest check-pep8-compliance \
	test-packages docs security-checks bandit dependency-audit run-checks bench bench-large bench-cdc report stop clean-state clean \
	layer package tf-validate deploy-local put-secrets upload-config

help:
	@echo "make run                    run the pipeline once on the embedded PostgreSQL"
	@echo "make test                   import contract, type check, then every test (they start"
	@echo "                            their own PostgreSQL, MariaDB, Spark, Chromium, S3)"
	@echo "make test-fast              the edit loop: every test but MariaDB, Spark, Chromium and"
	@echo "                            the S3 emulator ones, on both cores (about 2 minutes)"
	@echo "make lint-imports           the import contract (pyproject.toml [tool.importlinter])"
	@echo "make typecheck              mypy over src/"
	@echo "make install-requirements   create .venv and install totes (totes on .venv/bin)"
	@echo "make install-dev-tools      add pytest, moto, flake8, bandit, pip-audit, pyspark"
	@echo "make check-pep8-compliance  flake8"
	@echo "make security-checks        bandit and a dependency audit (needs the network)"
	@echo "make bench                  time small incremental runs after 1, 10, 100 batches"
	@echo "make bench-large            time every stage on a 2,000,000-row sales_order, next to dlt"
	@echo "make bench-cdc              time change data capture on the 2,000,000-row sales_order"
	@echo "make docs                   build the documentation site into build/site (--strict;"
	@echo "                            open build/site/index.html, offline)"
	@echo "make report                 write report.html: the warehouse and the pipeline's health"
	@echo "make layer / package        build the Lambda layer / code zip into build/ (sizes printed)"
	@echo "make tf-validate            terraform fmt + validate, asl-validator, checkov (offline)"
	@echo "make deploy-local           apply both layers on an AWS emulator, run the state machine"
	@echo "make put-secrets            put the secrets' values in AWS (ENVIRONMENT=prod)"
	@echo "make upload-config          check config/pipeline.yaml and upload it for plan (ENVIRONMENT=prod)"
	@echo "make stop / clean-state     stop the embedded PostgreSQL / also delete .totes"

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "totes needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(INSTALLED): $(BIN)/python requirements.txt pyproject.toml
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

$(DEV_INSTALLED): $(INSTALLED) requirements-dev.txt
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

install-requirements: $(INSTALLED)

install-dev-tools: $(DEV_INSTALLED)

run: $(INSTALLED)
	$(BIN)/totes run

test: $(DEV_INSTALLED) test-packages $(MERMAID) lint-imports typecheck run-pytest

# The edit loop: the unit and embedded-PostgreSQL tests on both cores; what needs MariaDB,
# Spark, Chromium or moto's server is left out (make test runs it).
test-fast: $(DEV_INSTALLED) $(MERMAID)
	@$(BIN)/pytest -n 2 --dist worksteal -q -m "not mariadb and not spark and not browser and not emulator" \
		$(PYTEST_ARGS)

# Stages import only contracts and utils (and the star-schema rules), never each other;
# contracts import nothing of the project's; utils never import a stage.
lint-imports: $(DEV_INSTALLED)
	$(BIN)/lint-imports

typecheck: $(DEV_INSTALLED)
	scripts/typecheck.sh

# The documentation site, from docs/ (mkdocs.yml; scripts/docs_site.py generates the reference
# pages from the code). Mermaid, which draws its diagrams, comes from npm and is served by the
# site itself: nothing is fetched when it is built or read.
$(MERMAID):
	npm install --no-save --no-audit --no-fund --prefix build/docs-node mermaid@11.17.2 >/dev/null

docs: $(DEV_INSTALLED) $(MERMAID)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	@echo "docs: build/site/index.html"

# What the tests use from Debian (MariaDB for MySQL sources, Chromium for the report), if missing.
test-packages:
	@bash scripts/install_test_packages.sh

# pytest exits 5 when it collected no test: for this project that means a broken suite. Two
# workers (each test starts its own servers on free ports or sockets), each given a contiguous
# half of the tests, and a worker that runs out takes half of the other's queue (worksteal):
# the run no longer ends on one worker's queue of long tests. The ten slowest listed.
PYTEST_WORKERS ?= 2
run-pytest: $(DEV_INSTALLED)
	@$(BIN)/pytest -n $(PYTEST_WORKERS) --dist worksteal --durations=10 $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: the suite is missing" >&2; fi; \
	exit $$status

check-pep8-compliance: $(DEV_INSTALLED)
	$(BIN)/flake8 src tests benchmarks

# bandit warns once per f-string part about the `# nosec B608` lines (identifier-only SQL);
# those warnings are dropped, its findings and exit status are kept.
bandit: $(DEV_INSTALLED)
	@set -o pipefail; $(BIN)/bandit --quiet --recursive src scripts --severity-level medium 2>&1 \
		| { grep -v "nosec encountered" || true; }

dependency-audit: $(DEV_INSTALLED)
	$(BIN)/pip-audit --requirement requirements.txt

security-checks: bandit dependency-audit

run-checks: check-pep8-compliance security-checks run-pytest

bench: $(INSTALLED)
	$(BIN)/python benchmarks/incremental_run.py

# The warehouse report of the embedded warehouse (after `make run`), one HTML file.
report: $(INSTALLED)
	$(BIN)/totes report --output report.html

# A 2,000,000-row sales_order: stages, floors, dlt on the same source, no-change and 10-row
# runs (about 4 minutes).
ROWS ?= 2000000
bench-large: $(DEV_INSTALLED) $(DLT_INSTALLED)
	TOTES_BENCH_ROWS=$(ROWS) TOTES_BENCH_DLT_PYTHON=$(DLT_VENV)/bin/python $(BIN)/python benchmarks/large_source.py

# sales_order on extract_type: cdc: the initial copy, a run with nothing new, 10,000 changes.
bench-cdc: $(INSTALLED)
	$(BIN)/python benchmarks/cdc_run.py --source $(or $(SOURCE),postgresql)

$(DLT_INSTALLED): benchmarks/requirements-dlt.txt
	$(PYTHON) -m venv $(DLT_VENV)
	$(DLT_VENV)/bin/pip install --quiet -r benchmarks/requirements-dlt.txt
	touch $@

# ---- AWS deployment ----------------------------------------------------------------------
TF := scripts/tf
TF_LAYERS := immutable-terraform main-terraform
CHECKOV := build/checkov/bin/checkov
ASL_VALIDATOR := build/node/node_modules/.bin/asl-validator

layer: $(INSTALLED)
	$(BIN)/python scripts/build_lambda.py smoke-test layer

package: $(INSTALLED)
	$(BIN)/python scripts/build_lambda.py package

$(CHECKOV):
	$(PYTHON) -m venv build/checkov
	build/checkov/bin/pip install --quiet checkov==3.3.30

$(ASL_VALIDATOR):
	npm install --no-save --no-audit --no-fund --prefix build/node asl-validator@4.0.0

tf-validate: $(CHECKOV) $(ASL_VALIDATOR)
	$(TF) fmt -check -recursive immutable-terraform
	$(TF) fmt -check -recursive main-terraform
	@for layer in $(TF_LAYERS); do \
		$(TF) -chdir=$$layer init -backend=false -input=false > /dev/null || exit 1; \
		echo "terraform validate $$layer"; $(TF) -chdir=$$layer validate -no-color || exit 1; \
	done
	scripts/render_state_machine.sh
	$(ASL_VALIDATOR) --json-path build/state_machine.json
	@for layer in $(TF_LAYERS); do \
		echo "checkov $$layer"; \
		CKV_PARSE_ERROR_FAIL=true $(CHECKOV) --quiet --compact --skip-download \
			--framework terraform -d $$layer || exit 1; \
	done

# Both layers on moto's server on loopback, two executions, then destroy (scripts/deploy_local.py).
deploy-local: $(DEV_INSTALLED)
	$(BIN)/python scripts/deploy_local.py

ENVIRONMENT ?= prod
put-secrets: $(INSTALLED)
	$(BIN)/python scripts/put_secrets.py --environment $(ENVIRONMENT)

upload-config: $(INSTALLED)
	$(BIN)/python scripts/upload_config.py --environment $(ENVIRONMENT)

stop:
	-@[ -x $(BIN)/totes ] && $(BIN)/totes embedded stop

clean-state: stop
	rm -rf .totes

clean: clean-state
	rm -rf $(VENV) $(DLT_VENV) build *.egg-info
