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

.PHONY: demo test test-fast install jars clean

demo: install
	$(BIN)/twotower demo

test: install
	$(BIN)/python -m pytest -q -ra

test-fast: install
	$(BIN)/python -m pytest -q -ra -m "not slow"

install: $(VENV)/.installed jars

# Installs the package with the CPU trainer and the test tools; re-runs when setup.py changes.
$(VENV)/.installed: setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -e '.[train-cpu,test]'
	touch $@

jars: $(JARS)/.fetched

$(JARS)/.fetched: deps/pom.xml
	sh deps/fetch-jars.sh $(JARS)
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info demo-output
