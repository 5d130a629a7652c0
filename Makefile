# Developer entry points. `make help` lists them; CI runs `make test` through .ci/run.
SHELL := /bin/bash
PY := .venv/bin/python
STACK := $(PY) -m devstack.stack
PACKAGES := streaming_analytics pipelines transforms models push_server devstack

.DEFAULT_GOAL := help
.PHONY: help install run stop status logs test test-unit test-integration lint types check bench job-jar lock clean distclean

help:  ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

install:  ## install everything (Debian packages, venv, Flink, Kafka jars); idempotent
	@bash scripts/install.sh

run: install  ## start the whole system locally and print where to look; Ctrl-C stops it
	@$(STACK) run

stop:  ## stop everything `make run` / `stack up` started
	@if [ -x $(PY) ]; then $(STACK) down; fi

status:  ## show what runs
	@$(STACK) status

logs:  ## follow all logs (make logs C=kafka for one component)
	@$(STACK) logs $(C) -f

test: install  ## lint, types, then the whole suite against a throwaway stack it starts and stops (= CI)
	@.venv/bin/ruff check .
	@.venv/bin/mypy
	@bash scripts/test.sh

test-unit: install  ## unit tests only (no services)
	@$(PY) -m pytest -m unit -q

lint: install  ## ruff
	@.venv/bin/ruff check .

types: install  ## mypy (strict) on our packages
	@.venv/bin/mypy

check: test  ## everything CI cares about (make test runs lint and types first)

job-jar: install  ## the portable Flink job jar a FlinkDeployment runs (var/job-jar/; docs/operations.md)
	@$(PY) -m pipelines.job_jar $(if $(OUT),--output $(OUT))

bench: install  ## benchmarks; results go to docs/benchmarks.md
	@bash scripts/bench.sh

lock: install  ## regenerate requirements/constraints.txt from the venv
	@{ head -n 2 requirements/constraints.txt; .venv/bin/pip freeze --exclude-editable | grep -viE '^(tensorflow-hub|tf-keras)=='; } > requirements/constraints.txt.new && mv requirements/constraints.txt.new requirements/constraints.txt

clean: stop  ## stop the stack and delete its data and logs (var/)
	@rm -rf var

distclean: clean  ## also delete the venv and downloaded tools
	@rm -rf .venv .local
