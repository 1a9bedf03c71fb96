# Two commands do all set-up on a fresh machine:  `make lab`  and  `make test`.
# The first use creates a virtual environment in .venv and installs the package into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; an unpinned `torch` could pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
export MUJOCO_GL ?= egl
# Jupyter refuses to start as root (containers, cloud VMs) unless told it may.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: install lab test test-fast bench browser-test clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

lab: install  ## JupyterLab opened on the course notebooks
	$(BIN)/jupyter lab $(ALLOW_ROOT) notebooks/

test: install  ## the whole test suite, notebooks included
	$(BIN)/python -m pytest -n 2 --dist loadgroup tests

test-fast: install  ## unit tests only (no notebooks, no slow training)
	$(BIN)/python -m pytest -n 2 -m "not slow and not notebooks" tests

bench: install  ## throughput benchmark (prints a table)
	$(BIN)/python benchmarks/throughput.py

browser-test: install  ## JupyterLab + headless Chromium run notebooks 02 and 04 and move each explorer's slider (screenshots in figures/browser/)
	bash scripts/install_browser.sh $(BIN)/python
	$(BIN)/python scripts/browser_test.py --out figures/browser

clean:
	rm -rf $(VENV) .pytest_cache
