# `make test`: a fresh machine to a passing suite. `make demo`: the main job (see README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0

.PHONY: venv test demo clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-build-isolation -e .
	touch $@

test: venv
	$(PY) -m pytest -q tests

# the embedded main job: S-TLLR vs BPTT on scikit-learn's digits, table + plot in experiments/demo
demo: venv
	$(PY) -m training.demo

clean:
	rm -rf $(VENV) build *.egg-info
