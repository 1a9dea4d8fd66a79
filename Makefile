# shardflow — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SF := $(BIN)/shardflow
CLUSTER_DIR ?= /tmp/shardflow-demo
DEMO_COUNT ?= 300
DEMO_WORKERS ?= 2
LOAD_USERS ?= 20
LOAD_TIME ?= 30s
BENCH_RUNS ?= 3
SOAK_SECONDS ?= 1800
RETENTION_SOAK_SECONDS ?= 3600
CITUS_SRC ?= ../shared/citus/citus-13.2.2-src.tar.gz

.DEFAULT_GOAL := help
.PHONY: help install citus demo examples demo-citus demo-status demo-down load lint format test test-all chaos soak soak-retention bench-gc bench-schedules bench bench-interaction bench-dashboard bench-citus bench-rebalance bench-dbos clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  make %-12s %s\n", $$1, $$2}'

install: $(VENV)/.installed ## Create the virtualenv and install shardflow with its dev tools

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

citus: ## Build and install the Citus extension for the local PostgreSQL from CITUS_SRC (a source tarball); nothing if installed
	bash deploy/citus/install-citus.sh $(CITUS_SRC)

demo: install ## Start (or reuse) a local 3-node cluster and run the demo workflow on it
	$(SF) cluster up --nodes 3 --dir $(CLUSTER_DIR)
	$(SF) --config $(CLUSTER_DIR)/shardflow.toml demo --count $(DEMO_COUNT) --workers $(DEMO_WORKERS)

examples: install ## Run examples/ (approval, fan-out payouts, booking saga) on the demo cluster
	$(SF) cluster up --nodes 3 --dir $(CLUSTER_DIR)
	export SHARDFLOW_CONFIG=$(CLUSTER_DIR)/shardflow.toml; \
	for example in approval payouts booking; do \
		echo "== examples/$$example.py"; $(BIN)/python examples/$$example.py || exit 1; \
	done

demo-status: install ## Show the demo cluster: nodes, partitions, workflows by status
	$(SF) --config $(CLUSTER_DIR)/shardflow.toml cluster status

demo-down: install ## Stop the demo cluster and delete its data
	$(SF) cluster down --destroy --dir $(CLUSTER_DIR)

load: install ## Headless Locust run (LOAD_USERS users, LOAD_TIME) on the demo cluster with 2 workers; ends with completed/backlog
	$(SF) cluster up --nodes 3 --dir $(CLUSTER_DIR)
	export SHARDFLOW_CONFIG=$(CLUSTER_DIR)/shardflow.toml; \
	export SHARDFLOW_LOAD_PREFIX=locust-$$(date +%s)-; \
	$(SF) worker --app shardflow.bench.workloads:app >$(CLUSTER_DIR)/load-worker-1.log 2>&1 & w1=$$!; \
	$(SF) worker --app shardflow.bench.workloads:app >$(CLUSTER_DIR)/load-worker-2.log 2>&1 & w2=$$!; \
	trap 'kill $$w1 $$w2; wait' EXIT; \
	$(BIN)/locust -f locustfiles/shardflow_users.py --headless -u $(LOAD_USERS) \
		-r $(LOAD_USERS) -t $(LOAD_TIME) --only-summary; \
	$(SF) bench drain $$SHARDFLOW_LOAD_PREFIX --wait 60

lint: install ## ruff (lint + format check) and mypy --strict on the package
	$(BIN)/ruff check shardflow tests locustfiles benchmarks examples
	$(BIN)/ruff format --check shardflow tests locustfiles benchmarks examples
	$(BIN)/mypy

format: install ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix shardflow tests locustfiles benchmarks examples
	$(BIN)/ruff format shardflow tests locustfiles benchmarks examples

test: lint ## Lint, then the test suite against a fresh local 3-node cluster
	$(BIN)/pytest

test-all: lint ## The test suite including the long scenarios marked slow
	$(BIN)/pytest -m ''

chaos: install ## The long fault scenarios only (worker churn, latency isolation); prints a table
	$(BIN)/pytest -m slow -s -q tests/test_chaos.py | grep -E "^CHAOS|passed|failed"

soak: install ## Open-loop load at 50% and 90% of the measured maximum, SOAK_SECONDS each (30 min); every workflow must end
	$(BIN)/python benchmarks/soak.py --seconds $(SOAK_SECONDS) --out bench-results

bench-schedules: install ## 50 schedules ticking every second for 2 minutes on 3 nodes: one run per tick, tick -> start p50/p99
	$(BIN)/python benchmarks/schedule_precision.py --out bench-results

soak-retention: install ## Steady load with a 2-minute retention, RETENTION_SOAK_SECONDS (1 h); the tables' size must stay flat
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/retention_soak.py --seconds $(RETENTION_SOAK_SECONDS) --out bench-results

bench-gc: install ## The collector's rate: finished workflows past their retention removed per second, 3 nodes
	mkdir -p bench-results
	$(BIN)/shardflow bench gc --nodes 3 --json bench-results/gc.json

bench: install ## Throughput, latency, start_many and scaling benchmarks; JSON + PNG in bench-results/
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/run_all.py --runs $(BENCH_RUNS) --out bench-results

bench-interaction: install ## Signal -> resume latency (idle and under load) and relay children/s; JSON in bench-results/
	$(BIN)/python benchmarks/interaction.py --runs $(BENCH_RUNS) --out bench-results

bench-dbos: install ## W on shardflow and on DBOS (own virtualenv .venv-dbos) in one run; prints the ratio
	test -x .venv-dbos/bin/python || ($(PYTHON) -m venv .venv-dbos && .venv-dbos/bin/pip install -q dbos)
	mkdir -p bench-results
	$(BIN)/python benchmarks/compare_dbos.py --dbos-python .venv-dbos/bin/python \
		--runs $(BENCH_RUNS) --json bench-results/dbos.json

bench-citus: install ## W on Citus (direct and through the coordinator) next to plain nodes, same run; prints ratios
	$(BIN)/python benchmarks/citus_vs_plain.py --runs $(BENCH_RUNS) --out bench-results

bench-dashboard: install ## Dashboard page times with 200,000 workflows on 3 nodes (target 300 ms)
	$(BIN)/python benchmarks/dashboard.py --out bench-results/dashboard.json

bench-rebalance: install ## Benchmark moving partitions onto a new node under load
	mkdir -p bench-results
	$(SF) bench rebalance --json bench-results/rebalance.json

clean: ## Remove the virtualenv and caches (not clusters)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis dist build
