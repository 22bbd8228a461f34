# The two Quickstart commands: `make serve` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTEST_ARGS ?=

.PHONY: serve test install install-dev bench

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

install: $(PY)
	$(PIP) install -q -e .

# torch is pinned first so that sentence-transformers does not pull a newer (CUDA) build.
install-dev: $(PY)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev,embeddings]'

serve: install
	$(VENV)/bin/lmops serve

test: install-dev
	$(VENV)/bin/pytest $(PYTEST_ARGS)
