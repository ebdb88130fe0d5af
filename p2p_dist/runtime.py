"""Where a process runs: distributed setup, device, numerics. Chosen at run time, never by a code change."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch

from p2p_dist.config import Config, ConfigError
from p2p_dist.process_defaults import PROCESS_ENV_KEYS


@dataclass(frozen=True)
class Runtime:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    device: torch.device
    precision: str  # resolved: bf16 | fp16 | fp32

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bf16" else None

    @property
    def input_dtype(self) -> torch.dtype:
        # DeepSpeed's fp16 engine holds fp16 parameters, so inputs must match; bf16 runs under autocast.
        return torch.float16 if self.precision == "fp16" else torch.float32


def default_device() -> torch.device:
    """The current CUDA device when there is one, else the CPU (for work outside a training run)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def free_port() -> int:
    """A TCP port free on this machine now (for a rendezvous that nothing else has claimed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Automatic choices read the CPU's feature flags through `cpu_flags`. Setting this variable replaces the flags
# (a space- or comma-separated list), so that the whole suite can run as a CPU of another kind would see it:
# `P2P_DIST_CPU_FLAGS="avx2"` (AVX2-only) or `"avx2 avx512f avx512_bf16"` (native bf16). Testing only.
SIMULATED_CPU_FLAGS_ENV = "P2P_DIST_CPU_FLAGS"
NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
DECIDING_CPU_FLAGS = NATIVE_BF16_CPU_FLAGS | {"avx2", "avx512f"}  # the flags the choices here depend on


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (/proc/cpuinfo), or the simulated ones of P2P_DIST_CPU_FLAGS when set."""
    simulated = os.environ.get(SIMULATED_CPU_FLAGS_ENV)
    if simulated is not None:
        return frozenset(simulated.replace(",", " ").split())
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def has_fast_bf16(device: torch.device) -> bool:
    """bf16 autocast keeps fp32 master weights and needs no loss scaling, but pays off only with native bf16
    units: CUDA Ampere or newer, or CPUs with AVX512-BF16/AMX. Elsewhere oneDNN has no bf16 convolution and
    PyTorch falls back to a slow reference kernel (measured 20x slower than fp32 on an AVX2-only EPYC)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(cpu_flags() & NATIVE_BF16_CPU_FLAGS)


def resolve_precision(requested: str, zero_stage: int, device: torch.device) -> str:
    if requested == "auto":
        return "bf16" if has_fast_bf16(device) else "fp32"
    if requested == "fp16":
        if zero_stage == 0:
            # DeepSpeed 0.19.8 at ZeRO-0 divides fp16 gradients by the loss scale without scaling the loss.
            raise ConfigError(
                "precision=fp16 needs zero_stage >= 1 (DeepSpeed's ZeRO-0 fp16 path mis-scales "
                "gradients); use zero_stage=1 or precision=bf16"
            )
        if device.type != "cuda":
            raise ConfigError(
                "precision=fp16 needs a CUDA device (CPU fp16 kernels are not supported here); "
                "use precision=bf16 or fp32"
            )
    return requested


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity (a container or `taskset` may allow fewer than
    os.cpu_count() reports)."""
    return len(os.sched_getaffinity(0))


def threads_per_rank(cores: int, local_world_size: int, omp_num_threads: str | None) -> int | None:
    """Torch threads for one of `local_world_size` CPU ranks sharing `cores`: an equal share, since
    oversubscribed threads cost more than they give. None (leave torch's setting) when OMP_NUM_THREADS is set,
    by the user or by Ray for each trial's CPUs."""
    if omp_num_threads:
        return None
    return max(1, cores // local_world_size)


MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def resolve_memory_format(requested: str, device: torch.device, precision: str) -> torch.memory_format:
    """auto: channels_last where the convolution kernels are fastest in NHWC: cuDNN's, and oneDNN's bf16 ones on
    a native-bf16 CPU (measured 1.06x there); contiguous for fp32 on a CPU, where oneDNN would re-lay out the
    weights at every convolution (measured 0.88x on an AVX2-only CPU)."""
    if requested == "auto":
        fast_nhwc = device.type == "cuda" or precision == "bf16"
        return torch.channels_last if fast_nhwc else torch.contiguous_format
    return MEMORY_FORMATS[requested]


def resolve_model_memory_format(
    requested: str, input_format: torch.memory_format, zero_stage: int
) -> torch.memory_format:
    """The layout the parameters are held in; `input_format` is the inputs' (resolve_memory_format).

    auto: the inputs' layout. A convolution whose input and weight disagree re-lays one of them out at every call
    (for bf16 under autocast: the weight's bf16 copy, made at every forward, inherits the fp32 weight's layout).
    Measured on a 2-core native-bf16 EPYC (bf16 autocast, channels_last inputs, batch 4, a loaded machine):
    channels_last parameters 6% less CPU time per image than contiguous ones; the reference step under bf16
    autocast likewise. Contiguous at ZeRO >= 1 whatever was asked: DeepSpeed flattens the parameters into one
    contiguous buffer there."""
    if zero_stage > 0:
        return torch.contiguous_format
    if requested == "auto":
        return input_format
    return MEMORY_FORMATS[requested]


def resolve_bf16_mode(requested: str, device: torch.device, precision: str) -> str | None:
    """How precision=bf16 runs (None for other precisions): "autocast" (fp32 weights, cast to bf16 at every
    forward) or "bf16_weights" (DeepSpeed's bf16 mode: bf16 weights, fp32 master weights in its optimizer wrapper).

    auto: autocast everywhere. bf16 weights save the weight casts of every forward (G's 54M weights) but
    DeepSpeed's ZeRO-0 bf16 wrapper spends about as much in each optimizer step (an overflow check, a norm, an
    fp32 copy and a rescale of every gradient); measured on a 2-core native-bf16 EPYC at batch 4 (loaded
    machine): 1% less CPU time per image, the same images/s within noise. It would also accumulate micro-batch
    gradients (train.grad_accum) in bf16. Measured again by `benchmarks/run.py --sections candidates`."""
    if precision != "bf16":
        return None
    if requested != "auto":
        return requested
    return "autocast"


def resolve_small_maps(requested: str, device: torch.device, dtype: torch.dtype) -> str:
    """How the generator's layers on small maps and the discriminator's one-channel head run on `device` with operands
    of `dtype` (p2p_dist.models.small_maps): "matmul" or "conv". auto: the matmul for bf16 on a CPU (1.3-3x per layer
    on a native-bf16 CPU: oneDNN's bf16 kernels reorder the large weights of those layers at every call, and run one
    output channel at a few percent of the peak); the convolution kernels for fp32 on a CPU (the matmul no faster, a
    contiguous fp32 convolution 1.3-1.8x slower: AVX2-only CPUs train in fp32) and on CUDA (cuDNN)."""
    if requested != "auto":
        return requested
    return "matmul" if device.type == "cpu" and dtype == torch.bfloat16 else "conv"


def resolve_dropout_masks(requested: str, device: torch.device) -> str:
    """How dropout draws its masks on `device` (p2p_dist.models.dropout): "bits" or "bernoulli". auto: bits on a
    CPU, where torch's bernoulli_ makes one generator call per element (~10 ns each on a 2-core CPU); torch's own
    kernel on CUDA, where it is one fused kernel."""
    if requested != "auto":
        return requested
    return "bits" if device.type == "cpu" else "bernoulli"


def resolve_prefetch(requested: str, device: torch.device, loader: str) -> str:
    """When `loader` (data.loader) decodes a batch for `device`: "ahead", "on_demand", or "workers" for the webdataset
    loader, whose worker processes always work ahead. DALI's auto: ahead on CUDA, where the GPU decodes while it
    trains; on demand on a CPU, where the step's OpenMP threads fill every core and decoding threads running alongside
    them stall the whole team at each barrier (the real loop on a 2-core native-bf16 CPU, batch 4: 7.25 -> 7.33
    images/s decoding on demand, against 7.5 with no decoding at all)."""
    if loader != "dali":
        return "workers"
    if requested != "auto":
        return requested
    return "ahead" if device.type == "cuda" else "on_demand"


@dataclass(frozen=True)
class StepLayout:
    """How the training step runs on this runtime: the inputs' and the parameters' memory formats, and how
    precision=bf16 runs (None for other precisions)."""

    memory_format: torch.memory_format
    model_memory_format: torch.memory_format
    bf16_mode: str | None


def resolve_step_layout(cfg: Config, rt: Runtime) -> StepLayout:
    """The step's automatic choices, resolved once by the rules above for the engines and for the run's report."""
    memory_format = resolve_memory_format(cfg.train.memory_format, rt.device, rt.precision)
    return StepLayout(
        memory_format,
        resolve_model_memory_format(cfg.train.model_memory_format, memory_format, cfg.zero_stage),
        resolve_bf16_mode(cfg.train.bf16_mode, rt.device, rt.precision),
    )


def _format_name(memory_format: torch.memory_format) -> str:
    return "channels_last" if memory_format == torch.channels_last else "contiguous"


def resolved_choices(cfg: Config, rt: Runtime) -> dict:
    """What every automatic choice resolved to on this machine, and the facts it was resolved from: shown at
    start-up and written to the run's summary.json."""
    layout = resolve_step_layout(cfg, rt)
    choices = {
        "device": rt.device.type,
        "precision": rt.precision,
        "compile": cfg.train.compile,
        # The dtype the convolutions compute in: autocast's, else the parameters' and inputs'.
        "small_maps": resolve_small_maps(cfg.train.small_maps, rt.device, rt.autocast_dtype or rt.input_dtype),
        "dropout_masks": resolve_dropout_masks(cfg.train.dropout_masks, rt.device),
        "prefetch": resolve_prefetch(cfg.data.prefetch, rt.device, cfg.data.loader),
        "bf16_mode": layout.bf16_mode,
        "memory_format": _format_name(layout.memory_format),
        "model_memory_format": _format_name(layout.model_memory_format),
        "torch_threads": torch.get_num_threads(),
        "process_env": {key: os.environ.get(key) for key in PROCESS_ENV_KEYS},  # p2p_dist.process_defaults
    }
    if rt.device.type == "cuda":
        choices.update(gpu=torch.cuda.get_device_name(rt.device), cudnn_benchmark=torch.backends.cudnn.benchmark)
    else:
        choices["cpu_flags"] = sorted(cpu_flags() & DECIDING_CPU_FLAGS)
        if SIMULATED_CPU_FLAGS_ENV in os.environ:
            choices["cpu_flags_simulated"] = True
    return choices


def init_runtime(cfg: Config) -> Runtime:
    """Join the process group (a group of one without a launcher) and pick the device."""
    import deepspeed

    if "RANK" not in os.environ:  # plain `python launch/train.py`: a single-process group
        os.environ.update(
            RANK="0",
            LOCAL_RANK="0",
            WORLD_SIZE="1",
            LOCAL_WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(free_port()),
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        # Training shapes are fixed: let cuDNN time its algorithms once per shape and keep the fastest.
        torch.backends.cudnn.benchmark = True
    else:
        device = torch.device("cpu")
        threads = threads_per_rank(usable_cores(), local_world_size, os.environ.get("OMP_NUM_THREADS"))
        if threads is not None:
            torch.set_num_threads(threads)
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    precision = resolve_precision(cfg.precision, cfg.zero_stage, device)
    return Runtime(rank, local_rank, world_size, local_world_size, device, precision)


def deepspeed_shm_buffer(rank: int) -> Path:
    """The shared-memory workspace (~69 MB) DeepSpeed's CPU all-reduce op creates for `rank` at start-up and never
    removes (deepspeed/ops/csrc/cpu/comm/shm.cpp names it so): left behind, every run fills /dev/shm a little more,
    until runs die out of memory."""
    address, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    return Path("/dev/shm") / f"deepspeed_allreduce_buffer_{os.getuid()}_{address}_{port}_{rank}"


def shutdown() -> None:
    # Without an explicit teardown, ranks can abort at exit (seen with ZeRO-0 under torchrun).
    if torch.distributed.is_initialized():
        rank = torch.distributed.get_rank()
        torch.distributed.barrier()  # every rank mapped every workspace at start-up; unlinking keeps the mappings
        torch.distributed.destroy_process_group()
        deepspeed_shm_buffer(rank).unlink(missing_ok=True)
