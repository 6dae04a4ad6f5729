# Two commands do all the set-up on a fresh machine:
#   make demo   installs, then runs the main job (the paper's experiments on embedded data)
#   make test   installs, then runs the test suite (the Triton kernel through its interpreter too)
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install demo test bench lint

install:
	# The CPU build of torch; an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[experiments,gpu,dev,hf,lightning]"

demo: install
	$(PYTHON) -m rwwce experiment --dataset digits --out runs/demo

test: install
	$(PYTHON) -m pytest -q
	TRITON_INTERPRET=1 $(PYTHON) -m pytest -q tests/test_kernels_triton.py

bench: install
	$(PYTHON) benchmarks/bench_loss.py

# On a CUDA machine (installs nothing, needs no network): the CUDA tests, every kernel variant
# under compute-sanitizer and the GPU benchmark, all written into $(OUT). It runs with the
# machine's own python3 (the one that has torch and triton) unless $(PYTHON) exists here.
.PHONY: gpu-check
OUT ?= gpu-check-results
GPU_CHECK_PYTHON ?= $(if $(wildcard $(PYTHON)),$(PYTHON),python3)
gpu-check:
	$(GPU_CHECK_PYTHON) benchmarks/gpu_check.py --out $(OUT)

lint:
	ruff check src tests benchmarks examples
