# llava_wb: every target creates .venv on first use (CPU torch pinned and installed first).
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
# uv installs the ~190 packages after torch in about 30 s where pip takes about 65 s (same versions).
# --compile-bytecode as pip does: where PYTHONDONTWRITEBYTECODE is set (many containers), a venv without
# .pyc files recompiles transformers & co. in every process (the quick demo test: 122 s instead of 86 s).
# uv reads its own settings, not pip.conf: behind a package mirror set UV_INDEX_URL, or UV= for pip alone.
UV     ?= 1
STAMP  := $(VENV)/.installed
# DeepSpeed JIT-compiles its CPU ops once; keep the build cache inside the checkout.
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export MPLBACKEND := Agg
export TOKENIZERS_PARALLELISM := false
export PYTHONHASHSEED := 0
# On small CPU machines OpenMP threads that spin while waiting starve the dataloader workers.
export OMP_WAIT_POLICY := PASSIVE

.PHONY: venv demo test lint bench bench-quick lab clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (set PYTHON=/path/to/python3.11)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(if $(UV),$(PY) -m pip install -q uv && $(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) -e '.[all]' '$(TORCH)' || { echo "uv failed: installing with pip (make UV= skips uv)"; $(PY) -m pip install -q -e '.[all]'; },$(PY) -m pip install -q -e '.[all]')
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m recipes.demo --out runs/demo

# Lint and format check first (seconds); the import contracts run inside pytest (tests/test_architecture.py).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# pytest-xdist: one worker per physical core, at most 4 (a test may start 2-process runs of its own);
# PYTEST_ARGS= runs the suite in one process. Every multi-process test takes a free port of its own.
PYTEST_ARGS ?= -n auto --maxprocesses 4
test: lint
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

# BENCH_ARGS: extra flags for benchmarks.run_all; `make bench-quick` is the smoke run (results under runs/bench_quick).
bench: $(STAMP)
	$(PY) -m benchmarks.run_all $(BENCH_ARGS)

bench-quick: $(STAMP)
	$(PY) -m benchmarks.run_all --quick

# JupyterLab refuses to start as root unless told --allow-root (containers often run as root).
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --ip 127.0.0.1 --no-browser --notebook-dir notebooks $$( [ $$(id -u) = 0 ] && echo --allow-root )

clean:
	rm -rf runs .cache .pytest_cache
