"""OpenMP settings every p2p_dist process runs with, in force however its modules were imported.

OpenMP reads its environment once, when torch loads its runtime: a setting made later changes nothing. So the
entry points (launch/, benchmarks/, Ray workers) call `apply_openmp_defaults()` first thing, and if torch was
already imported by then, the process re-executes itself with the settings in place.
"""

from __future__ import annotations

import os
import sys

# Threads that spin while they wait steal the cores that DALI's decoding threads and the other ranks need: on
# 2 shared cores a training step measured 5x slower with the default spinning than with passive waits.
OPENMP_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


def apply_openmp_defaults() -> None:
    """Set what the user has not set explicitly; re-execute the process if OpenMP has already read its
    environment (torch imported), so that the settings are the ones it runs with."""
    missing = {key: value for key, value in OPENMP_DEFAULTS.items() if key not in os.environ}
    if not missing:
        return
    os.environ.update(missing)
    if "torch" in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
