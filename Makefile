# `make test`: a fresh machine to a passing suite. `make demo`: the main job (see README.md).
# `make bench`: the CPU benchmarks (speed, memory, MACs) into benchmarks/results/, < 10 min on 2 cores,
# then the figures README.md and docs/ quote from them (benchmarks.quote).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0

.PHONY: venv test test-fast test-seeds cuda-check demo bench clean

venv: $(VENV)/.installed

# the C++/CUDA sources are prerequisites so that `make test` rebuilds the extension when they change
$(VENV)/.installed: setup.py requirements-dev.txt $(wildcard csrc/*.cpp csrc/*.h csrc/cuda/*.cu csrc/cuda/*.cuh)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-build-isolation -e .
	touch $@

# what CI runs: every test, one pytest-xdist worker per core (TEST_WORKERS=0: one process); a test
# module stays on one worker (--dist loadscope), so its module fixtures are built once
TEST_WORKERS ?= auto
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadscope)
test: venv
	$(PY) -m pytest -q $(XDIST) tests

# the inner loop: everything but the end-to-end, distributed and benchmark smoke tests (< 1 min on 2 cores)
test-fast: venv
	$(PY) -m pytest -q $(XDIST) -m "not slow" tests

# every quick test, and the convergence runs, under three other per-test seeds (tests/conftest.py:
# STLLR_TEST_SEED_SALT; about 1 minute per salt on 2 cores); run it whenever a kernel, a tolerance or a
# test's inputs change: a test that passes for one draw only fails there
test-seeds: venv
	set -e; for salt in 1 2 3; do \
		echo "STLLR_TEST_SEED_SALT=$$salt"; \
		STLLR_TEST_SEED_SALT=$$salt $(PY) -m pytest -q $(XDIST) -m "not slow" tests; \
		STLLR_TEST_SEED_SALT=$$salt $(PY) -m pytest -q tests/test_convergence.py; \
	done

# the embedded main job: S-TLLR vs BPTT on scikit-learn's digits, table + plot in experiments/demo
demo: venv
	$(PY) -m training.demo

$(VENV)/.bench-deps: $(VENV)/.installed requirements-bench.txt
	$(PY) -m pip install -q --no-deps -r requirements-bench.txt
	touch $@

bench: venv $(VENV)/.bench-deps
	$(PY) -m benchmarks.train_step
	$(PY) -m benchmarks.memory
	$(PY) -m benchmarks.macs
	$(PY) -m benchmarks.summary
	$(PY) -m benchmarks.quote

# compile-only check of csrc/cuda/*.cu with nvcc -arch=sm_90 (skipped, with a message, without nvcc)
cuda-check: venv
	$(PY) csrc/check_cuda_compiles.py

clean:
	rm -rf $(VENV) build *.egg-info

# The GPU check on a GPU machine (see docs/gpu-check.md): the machine's own python3, nothing
# installed; lists what is missing, builds the CUDA extension in place, checks and times every kernel.
# Files land in GPU_CHECK_OUT (gpu_check.md, gpu_check.csv, gpu_check.log, build.log).
GPU_CHECK_OUT ?= gpu-check-out
.PHONY: gpu-check gpu-check-cpu compile-check-triton36
gpu-check:
	PYTHONUNBUFFERED=1 $(PYTHON) -m benchmarks.gpu_check --out $(GPU_CHECK_OUT)

# the same stages, tiny, on the CPU in Triton's interpreter (what tests/test_gpu_check.py runs)
gpu-check-cpu: venv
	$(PY) -m benchmarks.gpu_check --cpu-interpret --out $(GPU_CHECK_OUT)

# every Triton kernel compiled for sm_90 with triton 3.6.0, the GPU machine's version, without a GPU (it
# fails on a compile error or a register spill):
# triton 3.6.0 goes into its own directory (pip --target), ahead of the venv's triton on PYTHONPATH
TRITON36 ?= .venv-triton36
$(TRITON36)/.installed:
	$(PY) -m pip install -q --no-deps --target $(TRITON36) triton==3.6.0
	touch $@

compile-check-triton36: venv $(TRITON36)/.installed
	PYTHONPATH=$(TRITON36) $(PY) benchmarks/compile_check.py --out benchmarks/results/compile_check_triton36.md
