# Two commands: `make demo` and `make test`. Each creates .venv when missing and installs what is needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= demo_out

.PHONY: demo test venv bench clean redis java chromium

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned, so pip takes the CPU wheel on disk instead of a multi-GB CUDA build.
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,spark]"
	# every demo step once on the tiny shop: numba compiles and caches its kernels here, not in the first demo
	$(PY) -m homefeed.demo --warm-up || echo "warm-up failed: the numba kernels will compile on first use"
	touch $@

venv: $(VENV)/.installed

# Trains briefly (one epoch on the last days; it says so and prints each step's time): about 3 minutes on 2 cores.
demo: venv
	$(PY) -m homefeed.demo --out $(DEMO_DIR)

# A real redis-server for the Redis state-store tests; they skip with a reason where it cannot be installed.
redis:
	@command -v redis-server >/dev/null 2>&1 || { (apt-get update -qq && apt-get install -y -qq redis-server) >/dev/null 2>&1 \
	  || echo "redis-server could not be installed: the Redis tests will be skipped"; }

# A Java runtime for the Spark tests (PySpark 4 runs on Java 17), from the distribution's packages.
java:
	@command -v java >/dev/null 2>&1 || { (apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless) >/dev/null 2>&1 \
	  || echo "a Java runtime could not be installed: the Spark tests will be skipped"; }

# Headless Chromium and its driver for the console's browser tests, from the distribution's packages.
chromium:
	@command -v chromedriver >/dev/null 2>&1 || { (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 \
	  || echo "chromium could not be installed: the browser tests will be skipped"; }

test: venv redis java chromium
	$(PY) -m pytest -q

bench: venv
	$(PY) benchmarks/ingest.py --size large

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
