# The README's commands. Every target installs what it needs first, so each works on a fresh machine.
PYTHON_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# DeepSpeed JIT-compiles its CPU communication op on first use; build it once here, not in every run.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/$(VENV)/torch_extensions

.PHONY: install demo test test-ci test-all bench clean
install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[dev]'
	# --no-deps: cityscapesscripts declares the `typing` backport, which shadows the stdlib on 3.11.
	$(PY) -m pip install -q --no-deps cityscapesscripts==2.3.0
	$(PY) -m p2p_dist.install_check
	touch $(STAMP)

demo: install
	$(VENV)/bin/deepspeed launch/train.py --config configs/demo.yaml

# The quick loop while working: everything but the slow and GPU tests.
test: install
	$(PY) -m pytest -m "not slow and not gpu" tests

# What CI runs (.ci/run): every test that needs no GPU, the slow ones included.
test-ci: install
	$(PY) -m pytest -m "not gpu" tests

# Everything; the GPU tests skip themselves where there is no CUDA device.
test-all: install
	$(PY) -m pytest tests

bench: install
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) shards/demo runs
