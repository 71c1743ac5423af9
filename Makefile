# fedattr: the two set-up commands are `make demo` and `make test` (see README).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fedattr-installed

# Flower offline: no runtime dependency installation, no telemetry, no update checks,
# and a project-local FLWR_HOME so nothing is written to the user's ~/.flwr.
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export RAY_USAGE_STATS_ENABLED := 0
export FLWR_HOME ?= $(CURDIR)/.flwr_home
export FEDATTR_CACHE_DIR ?= $(CURDIR)/.fedattr_cache

.PHONY: venv demo test test-fast bench clean deploy-local

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	@start=$$(date +%s); \
	$(BIN)/fedattr run scenarios/demo.toml --out results/demo && \
	$(BIN)/fedattr stats results/demo && \
	echo "make demo: $$(( $$(date +%s) - start )) s wall on this machine (matmul rate above)"

# The whole suite with what it needs: scripts/test_env.sh installs and starts Docker for the compose
# tests where it can (root, apt-get) and stops that dockerd afterwards; elsewhere they skip, with the
# reason in the summary (-rs).
test: $(STAMP)
	scripts/test_env.sh $(BIN)/python -m pytest -q -rs --durations=15

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# The demo as separate processes: a SuperLink, one SuperNode per client, a SuperExec each (docs/deployment.md).
deploy-local: $(STAMP)
	$(BIN)/fedattr deploy local $(or $(SCENARIO),scenarios/demo.toml) --out results/$(or $(OUT),demo-deploy)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.evaluators
	$(BIN)/python -m benchmarks.engine
	$(BIN)/python -m benchmarks.concurrency
	$(BIN)/python -m benchmarks.robust_scoring

clean:
	rm -rf results .flwr_home .pytest_cache
