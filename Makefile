# Set-up and entry points. `make demo` and `make test` do everything on a fresh machine.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python

# Python 3.12 (JAX >= 0.12 needs >= 3.12; 3.12 is what the pins are tested with): python3.12 on
# PATH if it runs (a pyenv shim may exist but fail), else pyenv's versions folder (`pyenv root`, or
# ~/.pyenv), preferring 3.12 and then the newest later version.
PYENV_ROOT_DIR := $(shell pyenv root 2>/dev/null || echo $(HOME)/.pyenv)
PYTHON312 ?= $(shell for p in python3.12; do \
		$$p -c 'import sys; assert sys.version_info >= (3, 12)' >/dev/null 2>&1 && { command -v $$p; exit 0; }; \
	done; \
	for p in $$(ls -d $(PYENV_ROOT_DIR)/versions/3.12* 2>/dev/null | sort -V -r) \
		$$(ls -d $(PYENV_ROOT_DIR)/versions/3.1[3-9]* 2>/dev/null | sort -V -r); do \
		$$p/bin/python3 -c 'import sys; assert sys.version_info >= (3, 12)' >/dev/null 2>&1 && { echo $$p/bin/python3; exit 0; }; \
	done)

.PHONY: demo test lint bench venv native clean

# Ranges in setup.cfg, exact tested versions in constraints.txt.
$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	@if [ -z "$(PYTHON312)" ]; then \
		echo "error: longctx-jax needs Python >= 3.12 (JAX >= 0.12 has no wheels for older Pythons)."; \
		echo "       Put python3.12 on PATH, install it with pyenv (pyenv install 3.12), or pass PYTHON312=/path/to/python3.12."; \
		exit 1; fi
	@echo "using $(PYTHON312)"
	$(PYTHON312) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

# The native CPU top-k (`method="native"` of the sparse selection), a jax.ffi custom call.
NATIVE_TOPK := longctx_jax/attention/sparse/libtopk_cpu.so
$(NATIVE_TOPK): native/topk_cpu.cc $(VENV)/.installed
	$(CXX) -O3 -std=c++17 -shared -fPIC \
		-isystem "$$($(PY) -c 'import jax; print(jax.ffi.include_dir())' 2>/dev/null)" \
		$< -o $@ -lpthread

native: $(NATIVE_TOPK)

venv: $(VENV)/.installed $(NATIVE_TOPK)

demo: venv
	$(VENV)/bin/longctx ablate --config configs/ablations/position_extrapolation.py:demo

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(VENV)/bin/pytest -n 2 --durations=15

bench: venv
	$(VENV)/bin/longctx bench attention --workdir=runs/bench_attention

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache $(NATIVE_TOPK)
