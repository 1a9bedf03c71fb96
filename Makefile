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
	$(BIN)/python -m pip install --quiet -e '.[dev,sweep]'
	touch $@

lab: install  ## JupyterLab opened on the course notebooks
	$(BIN)/jupyter lab $(ALLOW_ROOT) notebooks/

test: install  ## the whole test suite, notebooks included
	$(BIN)/python -m pytest -n 2 --dist loadgroup tests

test-fast: install  ## unit tests only (no notebooks, no slow training)
	$(BIN)/python -m pytest -n 2 -m "not slow and not notebooks" tests

bench: install  ## throughput benchmark (prints a table)
	$(BIN)/python benchmarks/throughput.py

browser-test: install  ## JupyterLab + headless Chromium run notebooks 02b and 04 and move each explorer's slider (screenshots in _build/browser/, which git ignores)
	bash scripts/install_browser.sh $(BIN)/python
	$(BIN)/python scripts/browser_test.py --out _build/browser

.PHONY: site site-check
# The site's build must need no network: where the machine allows it, it runs in a network namespace
# of its own (no interface but a loopback that is down), so a tool that tried to download would fail.
NONET = $(shell if unshare --net true 2>/dev/null; then echo unshare --net; \
	elif unshare --net --map-root-user true 2>/dev/null; then echo unshare --net --map-root-user; fi)

$(VENV)/.site-installed: $(VENV)/.installed pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[site]'
	touch $@

site: install $(VENV)/.site-installed  ## the course site, from the committed notebooks (not re-executed): _build/site/html/index.html
	$(NONET) $(BIN)/python site/build.py

site-check: site  ## make site, then headless Chromium opens two of its pages and checks their figures render (screenshots in _build/site/check/)
	bash scripts/install_browser.sh $(BIN)/python
	$(BIN)/python scripts/site_check.py

clean:
	rm -rf $(VENV) .pytest_cache
