"""Training-step throughput: p2p_dist's engines against an eager step written to the reference recipe.

Every variant trains the same models (same seed, same initial weights) on the same in-memory inputs, so
input decoding is excluded (the data section and the real loop measure it). Variants are measured in
interleaved rounds (A, B, C, A, B, C, ...) so that load changing on a shared machine hits them alike.

Per variant and batch size: images/s, seconds per step and process CPU seconds per image (median, min, max
over repeats after warm-up), model FLOPs per image (torch.utils.flop_counter over one real step: forward
and backward of both networks, all three discriminator passes), FLOP/s utilisation against the device's
measured matmul peak, and peak memory: the resident state (parameters, gradients, optimizer state) plus the
step's transient peak
(``torch.cuda.max_memory_allocated`` on CUDA; on CPU the peak of tensor storage allocated inside the step,
tracked per ATen op, since RSS cannot be reset per variant).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from p2p_dist.config import Config, load_config
from p2p_dist.models import PHOTO_CHANNELS, generator_for
from p2p_dist.runtime import Runtime, has_fast_bf16, resolve_precision
from p2p_dist.train import step_ranges
from p2p_dist.train.adam import Adam
from p2p_dist.train.engines import ADAM_KERNEL, Pix2Pix
from p2p_dist.train.reference_step import ReferenceStep

from bench_common import Budget, summarise, synchronize, time_call, time_call_with_cpu

# The paper's load size for 256 crops, kept proportional for other resolutions.
LOAD_SIZE_RATIO = 286 / 256
STEPS_FOREVER = 10**9  # the learning-rate schedule never decays during a benchmark


def config_for(resolution: int, batch_size: int, *overrides: str) -> Config:
    """p2p_dist's default config at ``resolution``, plus dotted overrides (the benchmark's model settings)."""
    return load_config(
        None,
        [
            f"data.crop_size={resolution}",
            f"data.load_size={round(resolution * LOAD_SIZE_RATIO)}",
            f"train.batch_size={batch_size}",
            f"train.steps={STEPS_FOREVER}",
            *overrides,
        ],
    )


def precisions_for(device: torch.device) -> list[str]:
    """fp32 and bf16 everywhere; fp16 where DeepSpeed can run it (CUDA)."""
    return ["fp32", "bf16", "fp16"] if device.type == "cuda" else ["fp32", "bf16"]


@dataclass(frozen=True)
class Variant:
    """One way of running the training step. Process-wide settings (threads, oneDNN) are applied around
    each of its steps, so variants can be interleaved in one process."""

    name: str
    implementation: str  # "p2p_dist" (the DeepSpeed engines) or "reference" (eager, the reference recipe)
    precision: str = "auto"  # as requested in the config; resolved per device
    memory_format: str | None = None  # train.memory_format; None: the config default (reference: contiguous)
    norm: str | None = None  # None: the config default
    joint_d_forward: bool | None = None  # train.joint_d_forward; None: the config default
    bf16_mode: str | None = None  # train.bf16_mode; None: the config default (auto)
    model_memory_format: str | None = None  # train.model_memory_format; None: the config default
    compile: bool = False
    small_maps: str | None = None  # train.small_maps; None: the config default (auto)
    dropout_masks: str | None = None  # train.dropout_masks; None: the config default (auto)
    threads: int | None = None  # None: leave torch's thread count alone
    mkldnn: bool = True
    zero_stage: int = 0
    for_loop_adam: bool = False  # train.adam=for-loop (torch's CPU default) instead of the default fused kernel
    single_rank_allreduce: bool = False  # train.single_rank_allreduce: DeepSpeed's all-reduce in a group of one
    channels_last_model: bool = False  # reference only: parameters in channels_last too (PyTorch's recipe)
    default: bool = False  # p2p_dist's default configuration (what a user gets without options)

    def overrides(self) -> list[str]:
        out = [f"precision={self.precision}", f"zero_stage={self.zero_stage}"]
        if self.memory_format is not None:
            out.append(f"train.memory_format={self.memory_format}")
        if self.norm is not None:
            out.append(f"model.norm={self.norm}")
        if self.bf16_mode is not None:
            out.append(f"train.bf16_mode={self.bf16_mode}")
        if self.model_memory_format is not None:
            out.append(f"train.model_memory_format={self.model_memory_format}")
        if self.compile:
            out.append("train.compile=true")
        if self.small_maps is not None:
            out.append(f"train.small_maps={self.small_maps}")
        if self.dropout_masks is not None:
            out.append(f"train.dropout_masks={self.dropout_masks}")
        if self.joint_d_forward is not None:
            out.append(f"train.joint_d_forward={str(self.joint_d_forward).lower()}")
        if self.for_loop_adam:
            out.append("train.adam=for-loop")
        if self.single_rank_allreduce:
            out.append("train.single_rank_allreduce=true")
        return out


def default_variant() -> Variant:
    return Variant("p2p_dist default", "p2p_dist", precision="auto", default=True)


def reference_variant() -> Variant:
    return Variant("reference eager fp32", "reference", precision="fp32")


def reference_peers(device: torch.device) -> list[Variant]:
    """The reference recipe with the speed-ups PyTorch documents, each a peer to beat: fp32 as written, bf16
    autocast, bf16 autocast + channels_last (parameters and inputs), and on CUDA fp16 autocast with a GradScaler.
    The maths is the reference's; only the arithmetic precision and memory layout change."""
    peers = [
        reference_variant(),
        Variant("reference + bf16 autocast", "reference", precision="bf16"),
        Variant(
            "reference + bf16 autocast + channels_last",
            "reference",
            precision="bf16",
            memory_format="channels_last",
            channels_last_model=True,
        ),
    ]
    if device.type == "cuda":
        peers.append(Variant("reference + fp16 autocast + GradScaler", "reference", precision="fp16"))
    return peers


def precision_variants(device: torch.device) -> list[Variant]:
    """p2p_dist at each precision with its other defaults; the one `auto` resolves to is the default."""
    auto = resolve_precision("auto", 0, device)
    return [
        Variant(
            f"p2p_dist {p}" + (" (default)" if p == auto else ""),
            "p2p_dist",
            precision=p,
            zero_stage=1 if p == "fp16" else 0,
            default=p == auto,
        )
        for p in precisions_for(device)
    ]


class EngineStep:
    """p2p_dist's training step (``Pix2Pix.train_step``: two DeepSpeed engines)."""

    def __init__(self, cfg: Config, rt: Runtime) -> None:
        self.model = Pix2Pix(cfg, rt, STEPS_FOREVER)

    def __call__(self, batch: dict) -> None:
        self.model.train_step([batch])  # one optimiser step over one micro-batch (train.grad_accum=1)

    def state_roots(self) -> list[object]:
        return [self.model.G.module, self.model.D.module, self.model.G.optimizer, self.model.D.optimizer]


class BuiltVariant:
    """A variant's step function with its process-wide settings applied around every call."""

    def __init__(
        self, variant: Variant, step: Callable[[dict], None], resolved_precision: str, roots: list[object]
    ) -> None:
        self.variant, self.step, self.resolved_precision, self.roots = variant, step, resolved_precision, roots

    def __call__(self, batch: dict) -> None:
        threads = torch.get_num_threads()
        if self.variant.threads is not None:
            torch.set_num_threads(self.variant.threads)
        try:
            # Entered only to turn oneDNN off: the flags context also resets oneDNN's TF32 setting (and warns).
            with torch.backends.mkldnn.flags(enabled=False) if not self.variant.mkldnn else contextlib.nullcontext():
                self.step(batch)
        finally:
            torch.set_num_threads(threads)


def build_variant(
    variant: Variant, rt: Runtime, resolution: int, seed: int = 0, model_overrides: tuple[str, ...] = ()
) -> BuiltVariant:
    """Models from ``seed`` (so every variant starts from the same weights) in ``variant``'s configuration."""
    cfg = config_for(resolution, 1, *model_overrides, *variant.overrides())
    torch.manual_seed(seed)
    if variant.implementation == "reference":
        step = ReferenceStep(
            cfg,
            rt.device,
            channels_last=variant.memory_format == "channels_last",
            precision=variant.precision,
            channels_last_model=variant.channels_last_model,
        )
        return BuiltVariant(variant, step, variant.precision, step.state_roots())
    if variant.implementation != "p2p_dist":
        raise ValueError(f"unknown implementation {variant.implementation!r} in variant {variant.name!r}")
    precision = resolve_precision(cfg.precision, cfg.zero_stage, rt.device)
    step = EngineStep(cfg, dataclasses.replace(rt, precision=precision))
    return BuiltVariant(variant, step, precision, step.state_roots())


def make_batch(batch_size: int, resolution: int, device: torch.device, label_channels: int = 3, seed: int = 0) -> dict:
    """Seeded inputs in [-1, 1] shaped like the loader's batches (compute cost does not depend on values)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch_size, label_channels, resolution, resolution)
    label = torch.rand(shape, generator=generator).mul_(2).sub_(1)
    photo = torch.rand((batch_size, PHOTO_CHANNELS, resolution, resolution), generator=generator).mul_(2).sub_(1)
    return {"label": label.to(device), "photo": photo.to(device)}


# ------------------------------------------------------------------------------------------ memory and FLOPs


class NewTensorMemory(TorchDispatchMode):
    """Peak bytes of tensor storage created inside the block and alive at the same time (CPU tensors have
    no allocator statistics). Outputs that alias an input (views, in-place and out= ops) are not new."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device
        self.live = 0
        self.peak = 0
        self._tracked: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        returns = func._schema.returns
        outputs = out if isinstance(out, (tuple, list)) and len(returns) > 1 else (out,)
        for schema_return, value in zip(returns, outputs):
            if schema_return.alias_info is None:
                for tensor in tree_flatten(value)[0]:
                    if isinstance(tensor, torch.Tensor):
                        self._track(tensor)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        if tensor.device.type != self.device.type:
            return
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self._tracked or storage.nbytes() == 0:
            return
        self._tracked.add(key)
        self.live += storage.nbytes()
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._freed, key, storage.nbytes())

    def _freed(self, key: int, nbytes: int) -> None:
        self._tracked.discard(key)
        self.live -= nbytes


def _tensors_in(obj: object, depth: int = 0) -> Iterator[torch.Tensor]:
    """Tensors reachable from models and optimizers (incl. DeepSpeed's wrappers and their fp32 copies)."""
    if isinstance(obj, torch.Tensor):
        yield obj
        if obj.grad is not None:
            yield obj.grad
    elif isinstance(obj, nn.Module):
        for tensor in [*obj.parameters(), *obj.buffers()]:
            yield from _tensors_in(tensor, depth)
    elif depth > 4:
        return
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _tensors_in(key, depth + 1)
            yield from _tensors_in(value, depth + 1)
    elif isinstance(obj, (list, tuple, set)):
        for value in obj:
            yield from _tensors_in(value, depth + 1)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        for value in vars(obj).values():
            yield from _tensors_in(value, depth + 1)


def resident_bytes(roots: list[object], device: torch.device) -> int:
    """Bytes of the distinct storages behind parameters, gradients, buffers and optimizer state on ``device``."""
    storages = {}
    for root in roots:
        for tensor in _tensors_in(root):
            if tensor.device.type == device.type:
                storage = tensor.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


@dataclass
class Probe:
    """One step run under the FLOP counter and the memory tracker (its time is not a throughput figure)."""

    seconds: float
    cpu_seconds: float
    flops: int
    resident_bytes: int
    transient_peak_bytes: int

    @property
    def peak_bytes(self) -> int:
        return self.resident_bytes + self.transient_peak_bytes


def probe_step(built: BuiltVariant, batch: dict, device: torch.device) -> Probe:
    resident = resident_bytes(built.roots, device)
    started, cpu_started = time.perf_counter(), time.process_time()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        with FlopCounterMode(display=False) as flops:
            built(batch)
        synchronize(device)
        transient = torch.cuda.max_memory_allocated(device) - before
    else:
        with FlopCounterMode(display=False) as flops, NewTensorMemory(device) as memory:
            built(batch)
        transient = memory.peak
    return Probe(
        time.perf_counter() - started, time.process_time() - cpu_started, flops.get_total_flops(), resident, transient
    )


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, repeats: int) -> dict:
    """FLOP/s of a square matmul: the device's practical peak for ``dtype`` (the best of ``repeats``)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b  # first call: library initialisation
    calls = 1
    first = time_call(lambda: a @ b, device)
    if device.type == "cuda":  # short kernels: time enough of them per sample
        calls = max(1, math.ceil(0.05 / max(first, 1e-6)))
    rates = []
    for _ in range(repeats):
        seconds = time_call(lambda: [a @ b for _ in range(calls)], device)
        rates.append(2 * size**3 * calls / seconds)
    return {"dtype": str(dtype).removeprefix("torch."), "size": size, **summarise(rates), "peak_flops": max(rates)}


# ---------------------------------------------------------------------------------------------- measuring


@dataclass
class StepPlan:
    """How much to measure; see ``run.py`` for the per-machine choices."""

    resolution: int
    batch_sizes: list[int]
    warmup: int  # steps before timing (the first also probes FLOPs and memory)
    repeats: int  # timed samples wanted per variant and batch size
    min_repeats: int  # never fewer, whatever the budget says
    budget_s: float  # timing seconds per variant and batch size; cuts repeats down to min_repeats
    max_step_s: float  # a step projected (or probed) slower than this is skipped / timed once
    min_sample_s: float = 0.0  # short steps are timed several at a time (GPU launches)
    model_overrides: tuple[str, ...] = ()
    seed: int = 0


@dataclass
class _Active:
    built: BuiltVariant
    probe: Probe
    steps_per_sample: int
    repeats: int
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    failed: str | None = None


def _failure(exc: BaseException) -> str:
    return f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


def _row(built: BuiltVariant, batch_size: int, **values) -> dict:
    v = built.variant
    return {
        "variant": v.name,
        "implementation": v.implementation,
        "precision": built.resolved_precision,
        "requested_precision": v.precision,
        "default": v.default,
        "batch_size": batch_size,
        **values,
    }


def failed_rows(variant: Variant, batch_sizes: list[int], message: str) -> list[dict]:
    """Rows for a variant that could not be built: the others are still measured (a one-shot GPU run)."""
    stub = BuiltVariant(variant, lambda batch: None, variant.precision, [])
    return [_row(stub, batch_size, skipped=message) for batch_size in batch_sizes]


def measure_variants(
    built: list[BuiltVariant], plan: StepPlan, device: torch.device, log: Callable[[str], None] = print
) -> list[dict]:
    """Rows of images/s, step time, FLOPs and memory per (variant, batch size), variants interleaved. A variant
    whose step raises is reported as failed (the row says why) and left out of later rounds and batch sizes; the
    others go on."""
    rows = []
    per_image_s: dict[str, float] = {}  # from the last batch size measured: projects the next one
    failed: dict[str, str] = {}  # variant -> why
    for batch_size in plan.batch_sizes:
        batch = make_batch(batch_size, plan.resolution, device, seed=plan.seed)
        active: list[_Active] = []
        for b in built:
            if b.variant.name in failed:
                rows.append(_row(b, batch_size, skipped=failed[b.variant.name]))
                continue
            try:
                setup = _set_up(b, batch, batch_size, plan, device, per_image_s, log)
            except Exception as exc:
                failed[b.variant.name] = _failure(exc)
                rows.append(_row(b, batch_size, skipped=failed[b.variant.name]))
                log(f"  {b.variant.name} @ batch {batch_size}: {failed[b.variant.name]}")
                continue
            if isinstance(setup, dict):
                rows.append(setup)
            else:
                active.append(setup)
        for round_index in range(max((a.repeats for a in active), default=0)):
            for a in active:
                if round_index < a.repeats and a.failed is None:
                    try:
                        wall, cpu = time_call_with_cpu(
                            lambda a=a, batch=batch: [a.built(batch) for _ in range(a.steps_per_sample)], device
                        )
                    except Exception as exc:
                        a.failed = failed[a.built.variant.name] = _failure(exc)
                        log(f"  {a.built.variant.name} @ batch {batch_size}: {a.failed}")
                        continue
                    a.seconds.append(wall / a.steps_per_sample)
                    a.cpu_seconds.append(cpu / a.steps_per_sample)
        for a in active:
            if a.failed is not None:
                rows.append(_row(a.built, batch_size, skipped=a.failed))
                continue
            step_s = summarise(a.seconds)
            per_image_s[a.built.variant.name] = step_s["median"] / batch_size
            images = summarise([batch_size / s for s in a.seconds])
            rows.append(
                _row(
                    a.built,
                    batch_size,
                    images_per_s=images,
                    step_s=step_s,
                    cpu_s_per_image=summarise([cpu / batch_size for cpu in a.cpu_seconds]),
                    warmed_up=a.repeats > 0,
                    steps_per_sample=a.steps_per_sample,
                    flops_per_image=a.probe.flops / batch_size,
                    resident_bytes=a.probe.resident_bytes,
                    transient_peak_bytes=a.probe.transient_peak_bytes,
                    peak_memory_bytes=a.probe.peak_bytes,
                )
            )
            log(
                f"  {a.built.variant.name} @ batch {batch_size}: {images['median']:.2f} images/s "
                f"(min {images['min']:.2f}, max {images['max']:.2f}, n={images['n']})"
            )
    return rows


def _set_up(
    b: BuiltVariant,
    batch: dict,
    batch_size: int,
    plan: StepPlan,
    device: torch.device,
    per_image_s: dict[str, float],
    log: Callable[[str], None],
) -> _Active | dict:
    """Probe and warm up one variant at one batch size: what to time, or the row of a skipped one."""
    projected = per_image_s.get(b.variant.name, 0.0) * batch_size
    if projected > plan.max_step_s:
        log(f"  {b.variant.name} @ batch {batch_size}: skipped, projected {projected:.0f} s/step")
        return _row(b, batch_size, skipped=f"projected {projected:.0f} s per step (> {plan.max_step_s:.0f} s limit)")
    probe = probe_step(b, batch, device)
    if probe.seconds > plan.max_step_s:
        # Too slow to repeat: the probe step stands as one unwarmed sample, and larger batches are skipped.
        per_image_s[b.variant.name] = probe.seconds / batch_size
        log(f"  {b.variant.name} @ batch {batch_size}: {probe.seconds:.1f} s/step (one unwarmed step)")
        return _Active(b, probe, 1, 0, [probe.seconds], [probe.cpu_seconds])
    # The probe was the first warm-up step; when more would eat over half the timing budget, it is
    # warm-up enough (slow steps amortise their one-off costs anyway).
    extra_warmup = plan.warmup - 1 if probe.seconds * (plan.warmup - 1) <= plan.budget_s / 2 else 0
    last = probe.seconds
    for _ in range(extra_warmup):
        last = time_call(lambda: b(batch), device)
    steps = max(1, math.ceil(plan.min_sample_s / max(last, 1e-9)))
    repeats = Budget(plan.budget_s).repeats(last * steps, plan.repeats, plan.min_repeats)
    return _Active(b, probe, steps, repeats)


def add_utilisation(rows: list[dict], peaks: dict[str, dict]) -> None:
    """FLOP/s achieved (FLOPs per image x images/s) over the matmul peak of the step's compute dtype, and over
    the bf16 matmul peak (one yardstick for every row: the fastest arithmetic the device offers the step)."""
    bf16 = peaks.get("bf16")
    for row in rows:
        if "images_per_s" not in row:
            continue
        achieved = row["flops_per_image"] * row["images_per_s"]["median"]
        row["achieved_flops"] = achieved
        peak = peaks.get(row.get("precision", ""))
        if peak:
            row["peak_flops"] = peak["peak_flops"]
            row["utilisation"] = achieved / peak["peak_flops"]
        if bf16:
            row["utilisation_of_bf16_peak"] = achieved / bf16["peak_flops"]


def measure_peaks(device: torch.device, quick: bool) -> dict[str, dict]:
    """Matmul peaks per precision. Without native bf16 (AVX2 CPUs) bf16 matmuls are slow: a smaller size."""
    size = 512 if quick else (8192 if device.type == "cuda" else 2048)
    repeats = 3 if quick else 5
    peaks = {"fp32": matmul_peak(device, torch.float32, size, repeats)}
    bf16_size = size if has_fast_bf16(device) else min(size, 1024)
    peaks["bf16"] = matmul_peak(device, torch.bfloat16, bf16_size, repeats)
    if device.type == "cuda":
        peaks["fp16"] = matmul_peak(device, torch.float16, size, repeats)
    return peaks


STEP_RANGE = "bench/training step"  # wraps each profiled step: the total the breakdown's rows add up to
CAST_OPS = ("aten::_to_copy",)  # dtype and layout conversions (.to), forward and backward
HOST_SYNC_OPS = ("aten::_local_scalar_dense",)  # a tensor read by the host: .item(), bool(tensor), .tolist()
# Every convolution's forward runs under aten::_convolution (oneDNN's transposed convolutions inside it, with no op
# of their own; the others in a child op) and its backward under aten::convolution_backward: their self times, and
# those of the forward children, are the convolution kernels.
CONV_FORWARD, CONV_BACKWARD = "aten::_convolution", "aten::convolution_backward"
CONV_KERNEL_OPS = (CONV_FORWARD, CONV_BACKWARD, "aten::mkldnn_convolution", "aten::_slow_conv2d_forward")
# p2p_dist's convolutions on small maps (p2p_dist.models.small_maps) run as matmuls: the pix2pix networks have no
# other matmul. Their gathers and patch sums are copies and adds, left with the rest of the step's memory work.
SMALL_MAP_MATMUL_OPS = ("aten::mm",)


def profile_steps(
    built: BuiltVariant,
    batch_size: int,
    resolution: int,
    device: torch.device,
    steps: int,
    trace_path: Path | None = None,
    row_limit: int = 20,
) -> dict:
    """torch.profiler over ``steps`` training steps (after one warm-up): the per-step breakdown by the step's
    named ranges (p2p_dist.train.step_ranges); with ``trace_path`` also a Chrome trace and the top ops."""
    from torch.profiler import ProfilerActivity, profile, record_function

    batch = make_batch(batch_size, resolution, device)
    built(batch)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=trace_path is not None) as prof:
        started = time.perf_counter()
        for _ in range(steps):
            with record_function(STEP_RANGE):
                built(batch)
        synchronize(device)
        wall_s = time.perf_counter() - started
    averages = prof.key_averages()
    out = {
        "variant": built.variant.name,
        "implementation": built.variant.implementation,
        "precision": built.resolved_precision,
        "default": built.variant.default,
        "batch_size": batch_size,
        "steps": steps,
        "wall_ms_per_step": 1e3 * wall_s / steps,
        **step_breakdown(averages, steps, device),
    }
    if trace_path is None:
        return out
    trace_path.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(trace_path))
    sort_key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    total_self = sum(e.self_cpu_time_total for e in averages) or 1.0
    top = sorted(
        averages,
        key=lambda e: e.self_device_time_total if device.type == "cuda" else e.self_cpu_time_total,
        reverse=True,
    )[:row_limit]
    out.update(
        trace=str(trace_path),
        table=averages.table(sort_by=sort_key, row_limit=row_limit),
        top_ops=[
            {
                "name": e.key,
                "calls": e.count,
                "self_cpu_ms": e.self_cpu_time_total / 1e3 / steps,
                "cpu_total_ms": e.cpu_time_total / 1e3 / steps,
                "self_device_ms": e.self_device_time_total / 1e3 / steps,
                "self_cpu_share": e.self_cpu_time_total / total_self,
            }
            for e in top
        ],
    )
    return out


def step_breakdown(averages, steps: int, device: torch.device) -> dict:
    """Milliseconds per step and share of the step for each named range of the step (in step order; a range
    entered several times per step is summed), the time outside them, and, as parts of those, the casts and the
    host synchronisations. On CUDA the ranges time the host (kernel launches), not the kernels."""
    events = {e.key: e for e in averages}
    if STEP_RANGE not in events:
        raise ValueError(f"the profile holds no {STEP_RANGE!r} range: run the steps inside it")
    step_ms = events[STEP_RANGE].cpu_time_total / 1e3 / steps
    rows = []
    for name in step_ranges.RANGES:
        event = events.get(name)
        if event is None:
            continue
        ms = event.cpu_time_total / 1e3 / steps
        rows.append(
            {
                "part": name.removeprefix("step/"),
                "range": name,
                "ms": ms,
                "share": ms / step_ms,
                "calls": event.count / steps,
            }
        )
    outside = step_ms - sum(r["ms"] for r in rows)
    rows.append(
        {
            "part": "outside the ranges (Python between them, requires_grad toggles, loss bookkeeping)",
            "range": None,
            "ms": outside,
            "share": outside / step_ms,
            "calls": None,
        }
    )

    def part_of(label: str, names: tuple[str, ...], self_time: bool = False, counted: tuple[str, ...] = ()) -> dict:
        """The ops' time per step (their total, or with `self_time` their own, without their children) and their
        calls (those of `counted` instead, where nested ops would count one call twice)."""
        found = [events[n] for n in names if n in events]
        ms = sum(e.self_cpu_time_total if self_time else e.cpu_time_total for e in found) / 1e3 / steps
        return {
            "part": label,
            "ops": list(names),
            "ms": ms,
            "share": ms / step_ms,
            "calls": sum(events[n].count for n in (counted or names) if n in events) / steps,
        }

    of_which = [
        part_of("casts: dtype and layout conversions (forward and backward)", CAST_OPS),
        part_of("host synchronisations: tensors read by the host", HOST_SYNC_OPS),
    ]
    if device.type == "cpu":  # on CUDA the host only launches the kernels: the share would say nothing
        of_which.append(
            part_of(
                "convolution kernels, forward and backward",
                CONV_KERNEL_OPS,
                self_time=True,
                counted=(CONV_FORWARD, CONV_BACKWARD),
            )
        )
        of_which.append(
            part_of("matmuls standing in for convolutions (small maps)", SMALL_MAP_MATMUL_OPS, self_time=True)
        )
    return {
        "step_ms": step_ms,
        "rows": rows,
        "of_which": of_which,
        "timing": "host (CUDA kernels run asynchronously)" if device.type == "cuda" else "wall time on the host",
    }


# ------------------------------------------------------------------------------------------- candidates


def candidate_variants(device: torch.device, with_compile: bool) -> list[Variant]:
    """Changes to the default configuration that keep the maths (up to rounding), measured side by side: each lever
    of issue 12 (memory layout of inputs and parameters, bf16 weights, the small-map layers as matmuls, dropout's
    masks, threads, the joint D forward, compile)
    either way, the default's earlier speed-ups undone, and the peers to beat. Variants that equal the default
    on this machine (the automatic choices resolve per machine) show the measurement's noise."""
    cores = torch.get_num_threads()
    variants = [
        default_variant(),
        # layout: inputs (train.memory_format) and parameters (train.model_memory_format)
        Variant(
            "contiguous inputs and parameters", "p2p_dist", memory_format="contiguous", model_memory_format="contiguous"
        ),
        Variant(
            "channels_last inputs, contiguous parameters",
            "p2p_dist",
            memory_format="channels_last",
            model_memory_format="contiguous",
        ),
        Variant(
            "channels_last inputs and parameters",
            "p2p_dist",
            memory_format="channels_last",
            model_memory_format="channels_last",
        ),
        # how bf16 runs (train.bf16_mode; only where precision=auto resolves to bf16)
        Variant("bf16 under autocast (fp32 weights cast at every forward)", "p2p_dist", bf16_mode="autocast"),
        Variant("bf16 weights held by DeepSpeed (fp32 masters)", "p2p_dist", bf16_mode="bf16_weights"),
        # G's innermost levels (maps <= 8x8; weight gradients at 16x16) and D's one-channel head (train.small_maps)
        Variant("small-map layers and D's head as matmuls", "p2p_dist", small_maps="matmul"),
        Variant("small-map layers and D's head on the kernels", "p2p_dist", small_maps="conv"),
        # how dropout draws its masks (train.dropout_masks)
        Variant("dropout masks from random bits", "p2p_dist", dropout_masks="bits"),
        Variant("torch's dropout masks (one generator call per element)", "p2p_dist", dropout_masks="bernoulli"),
        # earlier speed-ups, undone
        Variant("for-loop Adam (torch's CPU default)", "p2p_dist", for_loop_adam=True),
        Variant("DeepSpeed's all-reduce in a group of one", "p2p_dist", single_rank_allreduce=True),
        # one D forward over real and fake pairs: only where the norm is per-sample
        Variant("instance norm, joint D forward", "p2p_dist", norm="instance"),
        Variant("instance norm, separate D forwards", "p2p_dist", norm="instance", joint_d_forward=False),
        # the peers
        *reference_peers(device),
    ]
    if device.type == "cpu" and cores > 1:
        variants.append(
            Variant(
                f"{cores - 1} intra-op thread(s) instead of {cores} (one core left free)", "p2p_dist", threads=cores - 1
            )
        )
    if with_compile:
        variants.append(Variant("torch.compile (inductor)", "p2p_dist", compile=True))
    return variants


def measure_adam(cfg: Config, device: torch.device, repeats: int, warmup: int = 1) -> list[dict]:
    """Seconds per Adam step over the generator's parameters for torch's three implementations (the
    engines take a client Adam: its implementation is the trainer's choice), and for the fused kernel over
    channels_last parameters as torch steps them and as p2p_dist's Adam does (flat views of their storage); and how
    far each ends from the single-tensor for-loop after the same steps on the same gradients."""
    t = cfg.train
    torch.manual_seed(0)
    reference = [p.detach().to(device) for p in generator_for(cfg).parameters()]
    generator = torch.Generator(device=device).manual_seed(1)
    grads = [torch.randn(p.shape, device=device, generator=generator) * 1e-3 for p in reference]
    channels_last = torch.channels_last
    implementations = {
        name: (torch.optim.Adam, ADAM_KERNEL[name], torch.contiguous_format)
        for name in ("for-loop", "foreach", "fused")
    }
    implementations["fused, channels_last parameters (torch)"] = (torch.optim.Adam, ADAM_KERNEL["fused"], channels_last)
    implementations["fused, channels_last parameters (p2p_dist: flat storage)"] = (
        Adam,
        ADAM_KERNEL["fused"],
        channels_last,
    )
    default = "foreach" if device.type == "cuda" else "for-loop"
    results, finals = [], {}
    for name, (optimizer_class, options, layout) in implementations.items():
        params = [
            p.clone(memory_format=layout if p.dim() == 4 else torch.preserve_format).requires_grad_(True)
            for p in reference
        ]
        for p, g in zip(params, grads):
            p.grad = torch.empty_like(p).copy_(g)  # laid out like its parameter, as autograd does
        optimizer = optimizer_class(params, lr=t.lr_g, betas=(t.beta1, t.beta2), **options)
        for _ in range(warmup):
            optimizer.step()
        seconds = [time_call(optimizer.step, device) for _ in range(repeats)]
        finals[name] = params
        results.append(
            {
                "implementation": name + (" (torch's default here)" if name == default else ""),
                "name": name,
                "step_s": summarise(seconds),
            }
        )
        del optimizer
    base = next(r for r in results if r["name"] == "for-loop")["step_s"]["median"]
    with torch.no_grad():
        for r in results:
            r["speedup"] = base / r["step_s"]["median"]
            r["max_abs_diff"] = max(float((a - b).abs().max()) for a, b in zip(finals[r["name"]], finals["for-loop"]))
    return results
