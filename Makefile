# gendisc: every target does its own set-up; only Python >= 3.11 and make are needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision are built for each other: change them only as a pair
TORCH_PAIR := torch==2.14.1 torchvision==0.29.1
SHARED_DATA ?= $(abspath ../shared/data)
STAMP := $(VENV)/.installed

.PHONY: setup train test test-fast lint format bench gpu-check gpu-wheels clean help

help:
	@echo "make setup  - create $(VENV) and install gendisc with its dependencies"
	@echo "make train  - set up, then run the default experiment"
	@echo "make test   - set up, then run the whole test suite (what CI runs)"
	@echo "make test-fast - the suite without the tests marked slow (the inner loop)"
	@echo "make bench  - ssl_gan training speed: framework vs plain PyTorch loop"
	@echo "make gpu-check - GPU tests, bench on CUDA, the MNIST table as one group of members"
	@echo "make lint   - ruff check"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --upgrade pip wheel setuptools
	$(BIN)/python -m pip install $(TORCH_PAIR) -e ".[dev,notebook,sweep,timm]"
	touch $(STAMP)

setup: $(STAMP)

# the baseline classifier and the joint semi-supervised GAN on the same labels, side by side
train: setup
	$(BIN)/gendisc-train -m model=classifier,ssl_gan $(ARGS)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# in-process tests only (no subprocess sweeps, DDP, kill-and-resume, non-digits experiments or
# trainings of over ~10 s), on 2 workers (pytest-xdist) of one torch thread each
test-fast: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m "not slow" -n 2 --dist worksteal $(PYTEST_ARGS)

# ssl_gan under Lightning vs a plain PyTorch loop of the same work: prints "ratio: X"
bench: setup
	$(BIN)/python experiments/bench_ssl_gan.py $(ARGS)

# on the GPU machine (experiments/gpu_check/README.md); GPU_CHECK_BUDGET=tiny tries it here
gpu-check:
	bash experiments/gpu_check/run.sh

# here, before a GPU run: the wheels and MNIST files the GPU machine lacks (.whl/, .gpu_data/)
gpu-wheels: setup
	bash experiments/gpu_check/fetch_wheels.sh

lint: setup
	$(BIN)/ruff check src tests experiments
	$(BIN)/ruff format --check src tests experiments

format: setup
	$(BIN)/ruff format src tests experiments
	$(BIN)/ruff check --fix src tests experiments

clean:
	rm -rf $(VENV) outputs logs multirun .pytest_cache
