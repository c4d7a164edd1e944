# Two commands on a fresh machine: `make run` (the default studies through `dvc repro`) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
MUTATE_JOBS ?= 2
PREFECT_PORT ?= 4200

.PHONY: run test test-fast bench serve lab ui report mutate

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

# The default studies, read from the registry (tasks/studies/__init__.py): every study whose raw data,
# if it needs any (mnist, cifar10: files under data/raw, README), is in place.
LIST_STUDIES = studies="$$(python -m tasks.studies list)"

# Every stage runs against one Prefect server: the project's (state in .prefect/, its UI address printed),
# or the one PREFECT_API_URL names.
run: $(VENV)/.installed
	$(LIST_STUDIES) && python -m tasks.infra.prefect_server --port $(PREFECT_PORT) -- dvc repro $$studies claims

# The suite in TEST_JOBS processes (pytest-xdist), each taking a whole test file at a time, so that a module's
# fixtures (a lab's servers, a trained digits study) are built once; the files in the order tests/conftest.py
# gives them (the longest first).
TEST_JOBS ?= 2
PYTEST := pytest -n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder

test: $(VENV)/.installed
	$(PYTEST)

# The suite without the tests marked slow (flow runs and servers over 20 s each on 2 cores): a quick check
# while developing; `make test` (and CI) runs everything.
test-fast: $(VENV)/.installed
	$(PYTEST) -m "not slow"

# Mutation testing of the core modules with mutmut ([tool.mutmut] in pyproject.toml: modules, fast tests),
# from scratch in mutants/ (test edits are not seen by mutmut's cache), then the per-module table; survivors:
# `python tests/mutation/summary.py --list survived`, one diff: `mutmut show <name>`. Not part of `make test`.
mutate: $(VENV)/.installed
	rm -rf mutants
	OMP_NUM_THREADS=1 nice mutmut run --max-children $(MUTATE_JOBS)
	python tests/mutation/summary.py

bench: $(VENV)/.installed
	python benchmarks/gaussian_vectorisation.py
	python benchmarks/ple_engine.py
	python benchmarks/fid_features.py
	python benchmarks/generator_training.py
	python benchmarks/sweep.py
	python benchmarks/orchestration.py

# A Prefect server on 127.0.0.1 (state in .prefect/) serving the deployments of flows/deployments.yaml.
serve: $(VENV)/.installed
	PREFECT_HOME=$(CURDIR)/.prefect prefect server start --host 127.0.0.1 --port $(PREFECT_PORT) & server=$$!; \
	trap "kill $$server" EXIT INT TERM; \
	until python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$(PREFECT_PORT)/api/health', timeout=2)" 2>/dev/null; do sleep 1; done; \
	PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api python -m flows.serve flows/deployments.yaml

# Lab mode, in the foreground until Ctrl-C: PostgreSQL (Debian's package `postgresql`: apt-get install postgresql), a
# Prefect server and an MLflow server on it, a process work pool with LAB_WORKERS workers and the deployments of
# flows/deployments.yaml on it; state and logs in .lab/. Settings (README, "Lab mode"): LAB_PG_USER, LAB_PG_PASSWORD,
# LAB_PG_PORT (5433), LAB_PG_HOST (an existing PostgreSQL), PREFECT_PORT, MLFLOW_PORT, LAB_POOL, LAB_WORKERS.
lab: $(VENV)/.installed
	python -m tasks.infra.lab --dir .lab

# The MLflow UI on the local tracking store (what the studies log to without MLFLOW_TRACKING_URI).
MLFLOW_PORT ?= 5000
ui: $(VENV)/.installed
	@echo "MLflow UI: http://127.0.0.1:$(MLFLOW_PORT); each study's metrics against generation, one curve per method:"
	@env -u MLFLOW_TRACKING_URI python -m tasks.infra.tracking --ui http://127.0.0.1:$(MLFLOW_PORT)
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/.mlflow/mlflow.db --host 127.0.0.1 --port $(MLFLOW_PORT)

# reports/<study>/comparison.png and table.md for each default study, read from its latest run in MLflow.
report: $(VENV)/.installed
	$(LIST_STUDIES) && for study in $$studies; do python -m flows.report $$study || exit 1; done
