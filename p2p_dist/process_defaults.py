"""Settings every p2p_dist process runs with, in force however its modules were imported.

Two libraries read them from the environment once: OpenMP when torch loads its runtime, glibc's malloc at the
process's first allocation. So the entry points (launch/, benchmarks/, Ray workers) call `apply_process_defaults()`
first thing. It sets what the user has not set, so that every child process (DeepSpeed ranks, Ray workers) starts
with it; hands the malloc settings to this process's glibc directly (mallopt); and if torch was already imported,
re-executes the process so that OpenMP runs with its settings too. The keys it set are listed in DEFAULTED_ENV:
a child process recomputes those for itself, and anything else in the environment is the user's and wins.
"""

from __future__ import annotations

import ctypes
import os
import sys

DEFAULTED_ENV = "P2P_DIST_DEFAULTED_ENV"

# How long an OpenMP thread spins for its next task before it sleeps (libgomp's GOMP_SPINCOUNT; its own default is
# 300,000, OMP_WAIT_POLICY=PASSIVE makes it 0). Where several of our processes share the cores (DeepSpeed ranks
# on one machine, concurrent Ray trials), spinning threads steal them from the others and from DALI's decoders:
# a 2-core demo step ran 3.5-5x slower spinning than sleeping. A lone process wants its threads awake between
# back-to-back kernels: passive waits cost it 5-7% (2-core CPU, bf16, batch 4: step 0.645 -> 0.60 s with a spin
# of 30,000, 0.594 s with 300,000; the real loop with DALI 6.21 -> 6.35 -> 6.44 images/s, data wait <= 0.4%
# each). The short spin keeps that gain and still yields a core long before a scheduler time slice ends.
SHORT_SPIN = 30_000

# glibc gives every freed block above its mmap threshold (128 KiB, raised by use to at most 32 MiB) back to the
# OS, and trims the top of its heap above its trim threshold. A training step frees and allocates again the same
# activations, gradients and casts, so each step faulted them in afresh, zero-filled by the kernel: 66,000-80,000
# page faults and 0.13-0.16 s of kernel time per 0.7 s step (2-core CPU, bf16, batch 4). With blocks up to 32 MiB
# (glibc's limit) served from the heap and the heap never trimmed: ~2 faults a step, 0.70 -> 0.61 s per step.
# The heap then keeps the step's peak, which a training process reaches again at every step anyway.
# Values fit mallopt's int; the variables are glibc's documented tunables (man 3 mallopt).
MALLOC_DEFAULTS = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}
_MALLOPT_PARAMETER = {"MALLOC_TRIM_THRESHOLD_": -1, "MALLOC_MMAP_THRESHOLD_": -3}  # M_TRIM_THRESHOLD, M_MMAP_THRESHOLD


def process_defaults(sharing_cores: bool) -> dict[str, str]:
    """The settings of a process that shares the machine's cores with others of ours, or has them to itself.
    OMP_WAIT_POLICY is for OpenMP runtimes other than libgomp, which take the explicit spin count instead."""
    spin = "0" if sharing_cores else str(SHORT_SPIN)
    return {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": spin, **MALLOC_DEFAULTS}


OPENMP_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
PROCESS_ENV_KEYS = tuple(process_defaults(sharing_cores=False))  # what process_defaults sets


def processes_on_this_machine() -> int:
    """Ranks a launcher started on this machine (torchrun: LOCAL_WORLD_SIZE; DeepSpeed's launcher: LOCAL_SIZE)."""
    for key in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 1


def defaulted_keys() -> set[str]:
    """The environment keys p2p_dist set (in this process or a parent), as opposed to the user's."""
    return {key for key in os.environ.get(DEFAULTED_ENV, "").split(",") if key}


def _mallopt(settings: dict[str, str]) -> None:
    """Apply glibc malloc settings to the running process (elsewhere, e.g. macOS or musl, there is nothing to set)."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return
    for key, value in settings.items():
        if not mallopt(_MALLOPT_PARAMETER[key], int(value)):
            raise RuntimeError(f"glibc refused mallopt for {key}={value}")


def environment_for(sharing_cores: bool) -> dict[str, str]:
    """The process settings of a process (this one or a child) in these circumstances: what the user set, and our
    defaults for the rest, which DEFAULTED_ENV names."""
    ours = defaulted_keys()
    users = {key: os.environ[key] for key in PROCESS_ENV_KEYS if key in os.environ and key not in ours}
    users_openmp = bool(users.keys() & set(OPENMP_KEYS))  # a wait policy or a spin count the user chose decides
    defaults = {
        key: value
        for key, value in process_defaults(sharing_cores).items()
        if key not in users and not (users_openmp and key in OPENMP_KEYS)
    }
    return {**users, **defaults, DEFAULTED_ENV: ",".join(sorted(defaults))}


def apply_process_defaults() -> None:
    """Set what the user has not set explicitly; re-execute the process if OpenMP has already read its
    environment (torch imported), so that the settings are the ones it runs with."""
    changed = {
        key: value
        for key, value in environment_for(sharing_cores=processes_on_this_machine() > 1).items()
        if os.environ.get(key) != value
    }
    if not changed:
        return
    os.environ.update(changed)
    _mallopt({key: value for key, value in changed.items() if key in MALLOC_DEFAULTS})
    if "torch" in sys.modules and changed.keys() & set(OPENMP_KEYS):
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
