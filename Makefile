# Two commands do all the set-up on a fresh machine:
#   make demo   installs, then runs the main job (the paper's experiments on embedded data)
#   make test   installs, then runs the test suite (the Triton kernel through its interpreter too)
# Everything is installed into a project-local virtual environment, $(VENV), created with
# $(BASE_PYTHON). Which torch build goes into it is explicit (README, "Set-up"):
#   TORCH_SPEC       the torch requirement: torch==2.13.0, the version the tests run on
#   TORCH_INDEX_URL  the index torch is taken from; empty: pip's own configuration (PyPI: the
#                    CUDA build on Linux), https://download.pytorch.org/whl/cpu: the CPU-only build
BASE_PYTHON ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
PIP := $(PYTHON) -m pip
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=

.PHONY: install demo test bench lint

$(PYTHON):
	$(BASE_PYTHON) -m venv $(VENV)

install: $(PYTHON)
	$(PIP) install --quiet $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[experiments,gpu,dev,hf,lightning]"
	@$(PYTHON) -c "import torch; print('installed torch', torch.__version__, 'into $(VENV):', f'CUDA {torch.version.cuda} build' if torch.version.cuda else 'CPU-only build')"

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
	$(PYTHON) -m ruff check src tests benchmarks examples
