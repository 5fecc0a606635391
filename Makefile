# Two entry points (see README): `make run` and `make test`. Both build .venv when it is missing.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# A CPU wheel; set TORCH_SPEC (and PIP_EXTRA_INDEX_URL) for a CUDA build on GPU machines.
TORCH_SPEC ?= torch==2.13.0

.PHONY: env run test test-fast lint bench clean-env

env: $(VENV)/.ready

$(VENV)/.ready: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -e ".[dev]"
	@touch $@

PROMPT ?= two red circles above a blue square

# the main job: a reflection session on the embedded unified model (it draws PROMPT, reflects on its
# image and draws a revision, up to 4 times), logged as a run directory under runs/
run: env
	OMP_NUM_THREADS=1 $(BIN)/refloop run "$(PROMPT)"

# CI runs this: fast and slow tests (a few minutes on 2 cores)
test: env
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m "slow or not slow"

test-fast: env
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest

lint: env
	$(BIN)/ruff check .

bench: env
	$(BIN)/refloop world bench

clean-env:
	rm -rf $(VENV)
