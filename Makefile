# daisi-ws developer commands. Every target sets up .venv itself.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.stamp-install
NATIVE_SOURCES := $(wildcard csrc/daisi_ws/_native/*.pyx csrc/daisi_ws/_native/*.pxd)
PYTEST := $(PY) -m pytest -p no:cacheprovider
# BENCH_ARGS: extra pytest arguments for the benchmark targets, e.g. BENCH_ARGS='-m "not real"'
# (in-process benchmarks only) or BENCH_ARGS='-m real' (only those with real servers/sockets).
BENCH_ARGS ?=
BENCH  := $(PYTEST) --benchmark-only --benchmark-columns=min,median,mean,max,rounds $(BENCH_ARGS)
# `make benchmark` saves under .benchmarks/<machine>/; `make benchmark-pure` under .benchmarks/pure/.
PURE_STORAGE := file://./.benchmarks/pure

.PHONY: install serve test test-native test-pure lint benchmark benchmark-pure benchmark-inproc \
        benchmark-auth benchmark-conn benchmark-msg benchmark-session benchmark-integration \
        benchmark-hotpath benchmark-delivery benchmark-compare benchmark-report profile wheel clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py $(NATIVE_SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

serve: $(STAMP)
	$(VENV)/bin/daisi-ws serve

lint: $(STAMP)
	$(PY) -m ruff check python tests benchmarks
	$(PY) -m mypy

test: lint test-native test-pure
	$(PYTEST) benchmarks -q --benchmark-disable

test-native: $(STAMP)
	$(PY) -c 'import daisi_ws.hotpath as h, sys; sys.exit(0 if h.NATIVE else "compiled extensions did not load")'
	$(PYTEST) tests -q

test-pure: $(STAMP)
	DAISI_WS_NO_EXTENSIONS=1 $(PYTEST) tests -q

benchmark: $(STAMP)
	$(BENCH) benchmarks --benchmark-autosave

# The in-process benchmarks again with the pure-Python twins loaded process-wide: the "pure"
# column of benchmark-report for gateway-level benchmarks (hot-path ones run both twins anyway).
benchmark-pure: $(STAMP)
	DAISI_WS_NO_EXTENSIONS=1 $(BENCH) benchmarks -m "not real" --benchmark-autosave --benchmark-storage=$(PURE_STORAGE)

# Everything that needs no real server or socket: quick.
benchmark-inproc: $(STAMP)
	$(BENCH) benchmarks -m "not real"

benchmark-auth: $(STAMP)
	$(BENCH) benchmarks/test_bench_auth.py
benchmark-conn: $(STAMP)
	$(BENCH) benchmarks/test_bench_connections.py
benchmark-msg: $(STAMP)
	$(BENCH) benchmarks/test_bench_messages.py
benchmark-session: $(STAMP)
	$(BENCH) benchmarks/test_bench_sessions.py
benchmark-integration: $(STAMP)
	$(BENCH) benchmarks/test_bench_integration.py
benchmark-hotpath: $(STAMP)
	$(BENCH) benchmarks/test_bench_hotpath.py
benchmark-delivery: $(STAMP)
	$(BENCH) benchmarks/test_bench_delivery.py

benchmark-compare: $(STAMP)
	@ls .benchmarks/*/*.json >/dev/null 2>&1 || { \
	  echo "benchmark-compare: no saved run to compare against in .benchmarks/ - run 'make benchmark' first (it saves one)"; \
	  exit 1; }
	$(BENCH) benchmarks --benchmark-compare --benchmark-compare-fail=median:10%

benchmark-report: $(STAMP)
	$(PY) benchmarks/report.py

profile: $(STAMP)
	$(PY) benchmarks/profile_run.py

wheel: $(STAMP)
	$(PY) -m pip install -q build
	$(PY) -m build --wheel

clean:
	rm -rf build dist *.egg-info python/*.egg-info .pytest_cache .mypy_cache .ruff_cache
	find python -name '*.so' -delete; find csrc -name '*.c' -delete
