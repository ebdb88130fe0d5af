"""What every benchmark section shares: repeated timings and their summary, machine facts, load averages.

The machine a CPU benchmark runs on is often shared, so every figure is a median with its min and max over
repeats, and each section records ``os.getloadavg()`` before and after: a load above the core count means
the numbers are lower than the machine can do.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from p2p_dist.process_defaults import PROCESS_ENV_KEYS

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
GIB = 2**30


def summarise(samples: list[float]) -> dict:
    """Median, min and max of repeated measurements (the samples are kept: they show the noise)."""
    if not samples:
        raise ValueError("summarise needs at least one sample")
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "n": len(samples),
        "samples": list(samples),
    }


def pooled_summary(summaries: list[dict]) -> dict:
    """`summarise` over the samples of several summaries together (runs or rounds of one measurement)."""
    return summarise([sample for summary in summaries for sample in summary["samples"]])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call, finished on the device (CUDA work is asynchronous)."""
    synchronize(device)
    started = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - started


def time_call_with_cpu(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call. On a shared machine the wall time includes
    waiting for a core; the process's CPU time does not (though OpenMP threads spinning at barriers count)."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


@contextmanager
def load_recorded(record: dict) -> Iterator[dict]:
    """Put the 1/5/15-minute load averages before and after the block, and its wall time, into ``record``."""
    record["load_before"] = load_average()
    started = time.perf_counter()
    try:
        yield record
    finally:
        record["load_after"] = load_average()
        record["wall_s"] = round(time.perf_counter() - started, 1)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _dali_version() -> str | None:
    try:
        import nvidia.dali

        return nvidia.dali.__version__
    except ImportError:
        return None


def dali_available() -> bool:
    """Whether NVIDIA DALI can be imported here (the lent GPU machine has none: its wheel is too large to carry)."""
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:  # no `nvidia` namespace at all
        return False


def training_loader() -> str:
    """data.loader for the real runs: DALI where it is installed, else webdataset + DataLoader."""
    return "dali" if dali_available() else "webdataset"


def gpu_facts() -> dict:
    """What a GPU result depends on beyond torch: driver (nvidia-smi), CUDA runtime, cuDNN, TF32 settings."""
    if not torch.cuda.is_available():
        return {}
    properties = torch.cuda.get_device_properties(0)
    facts = {
        "gpu_memory_gib": round(properties.total_memory / GIB, 1),
        "gpu_compute_capability": f"{properties.major}.{properties.minor}",
        "gpu_multiprocessors": properties.multi_processor_count,
        "cudnn": torch.backends.cudnn.version(),
        # cuDNN convolutions use TF32 for fp32 by default; fp32 matmuls do not.
        "tf32": {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32},
        "gpu_driver": None,
    }
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout
            driver, max_sm_clock, power_limit = [v.strip() for v in out.splitlines()[0].split(",")][:3]
            facts.update(gpu_driver=driver, gpu_max_sm_clock=max_sm_clock, gpu_power_limit=power_limit)
        except (OSError, subprocess.SubprocessError, IndexError, ValueError):
            pass
    return facts


# The CPU features the report names: AVX2, AVX-512 (and its bf16/fp16/VNNI parts), AMX.
REPORTED_CPU_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


# Environment variables that cap the instruction set torch's CPU kernels use (oneDNN's, ATen's, MKL's): with the
# simulated flags of P2P_DIST_CPU_FLAGS, a CPU with AVX-512 then runs what an AVX2-only CPU would (`make
# bench-as-avx2-cpu`), on its own cores, caches and memory.
KERNEL_ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")


def machine_facts() -> dict:
    """Hardware and software a result depends on, recorded next to every result."""
    from p2p_dist.runtime import SIMULATED_CPU_FLAGS_ENV, cpu_flags, has_fast_bf16

    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    return {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        # The flags every automatic choice reads (p2p_dist.runtime.cpu_flags): simulated when P2P_DIST_CPU_FLAGS
        # is set, and then a run's automatic choices are those of the simulated CPU, not of this one.
        "cpu_simd": sorted(cpu_flags() & set(REPORTED_CPU_FLAGS)),
        "cpu_flags_simulated": SIMULATED_CPU_FLAGS_ENV in os.environ,
        "cpu_native_bf16": has_fast_bf16(torch.device("cpu")),
        "cpu_kernels": torch.backends.cpu.get_cpu_capability(),  # the ISA ATen's vectorised kernels run
        "kernel_isa_caps": {key: os.environ[key] for key in KERNEL_ISA_CAPS if key in os.environ},
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1),
        "gpus": gpus,
        "gpu_name": gpus[0] if gpus else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        # OpenMP and malloc settings in effect (p2p_dist.process_defaults sets some): they change CPU timings.
        "process_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", *PROCESS_ENV_KEYS)},
        "mkldnn": torch.backends.mkldnn.is_available(),
        "deepspeed": _version("deepspeed"),
        "dali": _dali_version(),
        "webdataset": _version("webdataset"),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        **gpu_facts(),
        "hostname": platform.node(),
    }


def slug(text: str) -> str:
    """``text`` as a safe file-name part: lower case, runs of other characters as one dash."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def machine_name(facts: dict) -> str:
    """The results file stem's machine part: the GPU name on CUDA machines, else the CPU model, sanitised; a CPU
    run with simulated flags is named for the kind it ran as."""
    name = facts["gpu_name"] or f"{facts['cpu_model']}-{facts['cpu_cores']}c"
    if facts["gpu_name"] and len(facts["gpus"]) > 1:
        name = f"{len(facts['gpus'])}x-{name}"
    elif not facts["gpu_name"] and facts.get("cpu_flags_simulated"):
        name += " as " + ("native-bf16 CPU" if facts["cpu_native_bf16"] else "AVX2-only CPU")
    return slug(name)


def today() -> str:
    return datetime.date.today().isoformat()


@dataclass
class Budget:
    """Seconds a measurement may take; used to cut repeats (never below a minimum) and skip what cannot fit."""

    seconds: float

    def repeats(self, per_repeat_s: float, wanted: int, minimum: int) -> int:
        fitting = int(self.seconds // max(per_repeat_s, 1e-9))
        return max(minimum, min(wanted, fitting))
