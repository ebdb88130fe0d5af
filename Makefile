# The README's commands. Every target installs what it needs first, so each works on a fresh machine.
PYTHON_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# DeepSpeed JIT-compiles its CPU communication op on first use; build it once here, not in every run.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/$(VENV)/torch_extensions

.PHONY: install demo test test-as-avx2-cpu test-as-native-bf16-cpu test-ci test-all bench bench-as-avx2-cpu gpu-wheels gpu-check clean
install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[dev]'
	# --no-deps: cityscapesscripts declares the `typing` backport, which shadows the stdlib on 3.11.
	$(PY) -m pip install -q --no-deps cityscapesscripts==2.3.0
	$(PY) -m p2p_dist.install_check
	touch $(STAMP)

# Train, then score the final checkpoint on the 100 val scenes (FCN-score beside its real-photo ceiling, FID/KID,
# SSIM/PSNR/L1) and print the table; the FCN segmenter is trained once on first use and cached in shards/demo.
demo: install
	$(VENV)/bin/deepspeed launch/train.py --config configs/demo.yaml
	$(PY) launch/evaluate.py --run runs/demo --kid-subset-size 50

# The quick loop while working: everything but the slow and GPU tests.
test: install
	$(PY) -m pytest -m "not slow and not gpu" tests

# The suite as the other kind of CPU would see it: every automatic choice (precision=auto, ...) reads these
# simulated flags instead of /proc/cpuinfo (p2p_dist.runtime.cpu_flags). Testing only.
AVX2_ONLY_CPU_FLAGS := avx avx2 fma f16c
test-as-avx2-cpu: export P2P_DIST_CPU_FLAGS = $(AVX2_ONLY_CPU_FLAGS)
test-as-avx2-cpu: test
test-as-native-bf16-cpu: export P2P_DIST_CPU_FLAGS = $(AVX2_ONLY_CPU_FLAGS) avx512f avx512bw avx512_vnni avx512_bf16
test-as-native-bf16-cpu: test

# What CI runs (.ci/run): every test that needs no GPU, the slow ones included.
test-ci: install
	$(PY) -m pytest -m "not gpu" tests

# Everything; the GPU tests skip themselves where there is no CUDA device.
test-all: install
	$(PY) -m pytest tests

bench: install
	$(PY) benchmarks/run.py

# The benchmark's step, peers and real loop as an AVX2-only CPU would run them, on a CPU with AVX-512: the simulated
# flags steer the automatic choices and the caps make oneDNN's, ATen's and MKL's kernels AVX2 ones. An emulation on
# this CPU's cores, caches and memory; results are named <machine>-as-avx2-only-cpu-<date>-...
bench-as-avx2-cpu: export P2P_DIST_CPU_FLAGS = $(AVX2_ONLY_CPU_FLAGS)
bench-as-avx2-cpu: export ONEDNN_MAX_CPU_ISA = AVX2
bench-as-avx2-cpu: export ATEN_CPU_CAPABILITY = avx2
bench-as-avx2-cpu: export MKL_ENABLE_INSTRUCTIONS = AVX2
bench-as-avx2-cpu: install
	$(PY) benchmarks/run.py --sections step,baseline,breakdown,loop

# Wheels the lent GPU machine's image lacks (DeepSpeed, webdataset, ...), for CPython 3.12: carry .whl there.
gpu-wheels:
	bash benchmarks/gpu_wheels.sh

# On a GPU: the gpu tests and the benchmark's GPU sections in one bounded shot (~8 min). It runs with the machine's
# own python3 and the carried .whl, so it must not depend on `install`. Without CUDA it says so and exits 0.
gpu-check:
	bash benchmarks/gpu_check.sh

clean:
	rm -rf $(VENV) shards/demo runs
