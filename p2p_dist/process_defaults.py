"""Settings every p2p_dist process runs with, in force however its modules were imported.

Two libraries read them from the environment once: OpenMP when torch loads its runtime, glibc's malloc at the
process's first allocation. So the entry points (launch/, benchmarks/, Ray workers) call `apply_process_defaults()`
first thing. It sets what the user has not set, so that every child process (DeepSpeed ranks, Ray workers) starts
with it; hands the malloc settings to this process's glibc directly (mallopt); and if torch was already imported,
re-executes the process so that OpenMP runs with its settings too.
"""

from __future__ import annotations

import ctypes
import os
import sys

# Threads that spin while they wait steal the cores that DALI's decoding threads and the other ranks need: on
# 2 shared cores a training step measured 5x slower with the default spinning than with passive waits.
OPENMP_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}

# glibc gives every freed block above its mmap threshold (128 KiB, raised by use to at most 32 MiB) back to the
# OS, and trims the top of its heap above its trim threshold. A training step frees and allocates again the same
# activations, gradients and casts, so each step faulted them in afresh, zero-filled by the kernel: 66,000-80,000
# page faults and 0.13-0.16 s of kernel time per 0.7 s step (2-core CPU, bf16, batch 4). With blocks up to 32 MiB
# (glibc's limit) served from the heap and the heap never trimmed: ~2 faults a step, 0.70 -> 0.61 s per step.
# The heap then keeps the step's peak, which a training process reaches again at every step anyway.
# Values fit mallopt's int; the variables are glibc's documented tunables (man 3 mallopt).
MALLOC_DEFAULTS = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}
_MALLOPT_PARAMETER = {"MALLOC_TRIM_THRESHOLD_": -1, "MALLOC_MMAP_THRESHOLD_": -3}  # M_TRIM_THRESHOLD, M_MMAP_THRESHOLD

PROCESS_DEFAULTS = {**OPENMP_DEFAULTS, **MALLOC_DEFAULTS}


def _mallopt(settings: dict[str, str]) -> None:
    """Apply glibc malloc settings to the running process (elsewhere, e.g. macOS or musl, there is nothing to set)."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return
    for key, value in settings.items():
        if not mallopt(_MALLOPT_PARAMETER[key], int(value)):
            raise RuntimeError(f"glibc refused mallopt for {key}={value}")


def apply_process_defaults() -> None:
    """Set what the user has not set explicitly; re-execute the process if OpenMP has already read its
    environment (torch imported), so that the settings are the ones it runs with."""
    missing = {key: value for key, value in PROCESS_DEFAULTS.items() if key not in os.environ}
    if not missing:
        return
    os.environ.update(missing)
    _mallopt({key: value for key, value in missing.items() if key in MALLOC_DEFAULTS})
    if "torch" in sys.modules and missing.keys() & OPENMP_DEFAULTS.keys():
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
