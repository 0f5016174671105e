# Both targets are self-sufficient on a fresh machine: they create .venv and install from this repo.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXTRAS ?= dev,torch,chart,tinygrad

.PHONY: venv test demo lint program bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

venv: $(PY)
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'

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
