# Two commands matter: `make demo` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-all bench screenshots clean

setup: $(STAMP)

# torch first: `torch==2.13.0` is the CPU build on this machine's disk; asked for indirectly,
# pip would fetch a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

# docs/explorer.png and docs/annotate.png, taken by the browser tests (needs /usr/bin/chromium)
screenshots: $(STAMP)
	FEEDBACKGEN_SCREENSHOTS=$(CURDIR)/docs $(PY) -m pytest -q tests/serve/test_serve_browser.py

clean:
	rm -rf runs .pytest_cache
