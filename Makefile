# The two set-up-complete commands are `make demo` and `make test`; both create .venv on first
# use and are no-ops for set-up when the venv matches the lock file.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.routerops-installed
# Every Python tree of the project that lint and the type checker read.
CODE := routerops stages flows infra bench $(wildcard services)

# Telemetry off everywhere, and Prefect's state kept inside the project.
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export BENTOML_DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1
export RAY_USAGE_STATS_ENABLED := 0
export WANDB_MODE := disabled
export VLLM_NO_USAGE_STATS := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# HuggingFace's per-file bars ("Loading weights", "Writing model shards") say nothing a log needs.
export HF_HUB_DISABLE_PROGRESS_BARS := 1
export PREFECT_HOME := $(CURDIR)/.routerops/prefect
export PREFECT_LOGGING_LEVEL ?= WARNING
# Prefect's own machinery stays quiet; what flows and tasks log (stage summaries, the verdict,
# what is left running) shows on the console as it does in the Prefect UI.
export PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL ?= INFO
export PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL ?= INFO
export GX_ANALYTICS_ENABLED := false

.PHONY: demo test lint lock bench clean-venv

$(STAMP): requirements/lock.txt requirements/torch-constraint.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24" "setuptools>=77,<90"
	# torch first, from the local CPU wheel; the constraint keeps every later step on it.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements/lock.txt -c requirements/torch-constraint.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

demo: $(STAMP)
	@mkdir -p $(PREFECT_HOME)
	$(PY) -m flows.pipeline

# Stop this checkout's local S3 store, which `make demo` leaves running (docs/storage.md).
.PHONY: stop up down
stop:
	$(PY) -m infra.local.s3 stop

# The local stack (docs/retraining.md): S3 store, Prefect server, the deployments of prefect.yaml
# and a process worker; `make down` stops all of it. Both are idempotent.
up: $(STAMP)
	$(PY) -m infra.local.stack up

down:
	$(PY) -m infra.local.stack down

# Lint and the type checker first: a type error fails the suite in seconds, not after it.
test: lint
	@mkdir -p $(PREFECT_HOME)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check $(CODE) tests
	$(VENV)/bin/mypy $(CODE)

bench: $(STAMP)
	$(PY) bench/candidates.py

# Re-resolve the direct dependencies (requirements/base.in) into the lock file.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet torch==2.13.0
	.venv-lock/bin/pip install --quiet -r requirements/base.in -c requirements/torch-constraint.txt
	{ echo "# Resolved from requirements/base.in with torch held at 2.13.0 (requirements/torch-constraint.txt)."; \
	  echo "# Regenerate with 'make lock'. Python 3.11, linux x86_64, CPU."; \
	  .venv-lock/bin/pip freeze --exclude-editable | grep -v -E '^(torch==|routerops)'; } > requirements/lock.txt
	rm -rf .venv-lock

clean-venv:
	rm -rf $(VENV)
