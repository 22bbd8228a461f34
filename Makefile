# The two Quickstart commands: `make serve` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTEST_ARGS ?=

# llama-cpp-python compiles llama.cpp when pip installs it. Its default native build (-march=native) crashed
# in llama_decode on an AVX-512/AMX host (its AMX code: src/lmops/engines/llamacpp_check.py says why), and pip
# reuses a wheel it cached on one host on the next: build for AVX2 (any x86-64 server of the last decade)
# instead. README.md's pip install uses the same flags (tests/test_production_install.py checks they agree).
# CMAKE_ARGS from the environment takes precedence.
ifeq ($(shell uname -m),x86_64)
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
endif

.PHONY: serve test install install-dev bench

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# lmops is installed in editable mode, so an edit to its code needs no reinstall. A stamp file in the venv
# records each install; it is redone when the package's metadata (pyproject.toml) changes.
INSTALLED := $(VENV)/.lmops-installed
INSTALLED_DEV := $(VENV)/.lmops-installed-dev
INSTALL_INPUTS := pyproject.toml

$(INSTALLED): $(INSTALL_INPUTS) | $(PY)
	$(PIP) install -q -e .
	touch $@

# torch is pinned first so that sentence-transformers does not pull a newer (CUDA) build.
$(INSTALLED_DEV): $(INSTALL_INPUTS) | $(PY)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev,embeddings]'
	touch $@ $(INSTALLED)

install: $(INSTALLED)

install-dev: $(INSTALLED_DEV)

serve: install
	$(VENV)/bin/lmops serve

test: install-dev
	$(VENV)/bin/pytest $(PYTEST_ARGS)
