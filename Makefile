# The README's two commands: `make demo` and `make test`. Each sets up what it needs, once:
# .venv (Python packages from PyPI) and build/jars (Spark's JVM dependencies from Maven Central).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
JARS := build/jars
export SPARK_LOCAL_IP ?= 127.0.0.1
export PYSPARK_PYTHON := $(abspath $(BIN)/python)
export PYSPARK_DRIVER_PYTHON := $(abspath $(BIN)/python)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test test-fast install jars system-deps catalog bench clean

demo: install
	$(BIN)/twotower demo

# Two workers: much of the suite waits on JVM start-ups, spark-submit and servers, so two test
# processes overlap that waiting; files (and the production folder) stay whole, the longest first.
test: install system-deps
	$(BIN)/python -m pytest -q -ra -n 2 --dist loadgroup --no-loadscope-reorder

test-fast: install
	$(BIN)/python -m pytest -q -ra -m "not slow"

install: $(VENV)/.installed jars

# Installs the package with the CPU trainer and the test tools; re-runs when setup.py changes.
$(VENV)/.installed: setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -e '.[train-cpu,test,catalog]'
	touch $@

jars: $(JARS)/.fetched

$(JARS)/.fetched: deps/pom.xml
	sh deps/fetch-jars.sh $(JARS)
	touch $@

# Debian packages the tests drive for real: a PostgreSQL server (the "recsys database" read over
# JDBC) and headless Chromium (renders the experiment report). Installed only when missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
system-deps:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

clean:
	rm -rf $(VENV) build *.egg-info demo-output

# The whole experiment catalog (the seed's eleven, then #8's and #11's features with the model that
# ranks and retrieves) on generated data of a stated size (defaults: 2000 users, 1000
# items, 18 days, generator seed 0), then a spread over model seeds for one pair, then the report
# (catalog-output/report.md, report.html; MLflow store catalog-output/mlflow.db).
CATALOG_USERS ?= 2000
CATALOG_ITEMS ?= 1000
CATALOG_DATA_SEED ?= 0
CATALOG_ROOT ?= catalog-output
CATALOG_DATA := $(CATALOG_ROOT)/data-u$(CATALOG_USERS)-i$(CATALOG_ITEMS)-s$(CATALOG_DATA_SEED)
CATALOG := exp01_base_dedup exp02_base_dedup_weighted exp03_simclr_history_mean exp04_dedup_history_mean \
	exp05_simclr_history_ids exp06_dedup_history_ids exp07_simclr_concat5_creator exp08_simclr_cluster18_creator \
	exp09_cluster18_cosine exp10_cluster18_batchnorm exp11_simclr_history_cosine \
	exp12_cluster18_creator_rank_retrieve exp13_history_cosine_rank_retrieve
CATALOG_SPREAD ?= exp03_simclr_history_mean exp08_simclr_cluster18_creator
CATALOG_SPREAD_SEEDS ?= 2 3
catalog: install
	test -d $(CATALOG_DATA)/interactions || $(BIN)/twotower generate --out $(CATALOG_DATA) \
	  --users $(CATALOG_USERS) --items $(CATALOG_ITEMS) --seed $(CATALOG_DATA_SEED)
	$(BIN)/twotower experiment run $(CATALOG) --input $(CATALOG_DATA) --root $(CATALOG_ROOT)
	$(BIN)/twotower experiment run $(CATALOG_SPREAD) $(addprefix --seed ,$(CATALOG_SPREAD_SEEDS)) --input $(CATALOG_DATA) --root $(CATALOG_ROOT)
	$(BIN)/twotower report --root $(CATALOG_ROOT)

# Benchmarks (issue 7): the feature pipeline at BENCH_SIZES events with DuckDB / naive-Spark /
# per-row baselines (at BENCH_COMPARE_SIZES); medians of BENCH_RUNS runs (one run from
# BENCH_SINGLE_RUN_FROM events up).
# Generated data is cached under build/bench/<size>; BENCH_RESUME=1 reuses finished sizes.
# Writes benchmarks/results/latest.json.
BENCH_SIZES ?= 1m,10m,50m
BENCH_RUNS ?= 3
BENCH_SINGLE_RUN_FROM ?= 50m
BENCH_COMPARE_SIZES ?= 1m,10m
bench: install
	$(BIN)/python -m pip install -q -e '.[train-cpu,test,catalog,bench]'
	$(BIN)/python benchmarks/bench_pipeline.py --sizes $(BENCH_SIZES) --runs $(BENCH_RUNS) --single-run-from $(BENCH_SINGLE_RUN_FROM) \
	  --compare-sizes $(BENCH_COMPARE_SIZES) $(if $(filter 1,$(BENCH_RESUME)),--resume,)
