# Two commands on a fresh machine: `make run` (the default studies through `dvc repro`) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: run test bench

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

# The default studies; mnist and cifar10 join when their files are under data/raw (README).
STUDIES := gaussian gmm gmm_lambda grid digits $(if $(wildcard data/raw/mnist/*),mnist) \
	$(if $(wildcard data/raw/cifar10/*),cifar10)

run: $(VENV)/.installed
	dvc repro $(STUDIES)

test: $(VENV)/.installed
	pytest

bench: $(VENV)/.installed
	python benchmarks/gaussian_vectorisation.py
	python benchmarks/ple_engine.py
	python benchmarks/fid_features.py
	python benchmarks/vae_training.py
