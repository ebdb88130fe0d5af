"""p2p_dist benchmark suite (`make bench`): images/s, where the time goes, and how it scales.

  .venv/bin/python benchmarks/run.py                       # everything, about 10-15 min on a quiet 2-core CPU
  .venv/bin/python benchmarks/run.py --quick               # tiny model and data: checks the suite, not the speed
  .venv/bin/python benchmarks/run.py --sections step,baseline,breakdown --profile
  .venv/bin/python benchmarks/run.py --sections candidates # changes that might make the default faster
  python3 benchmarks/run.py --gpu-check --sections step,baseline  # the sizes `make gpu-check` uses on a GPU

Sections:
  data       loader images/s (DALI: CPU here, mixed/GPU decode on CUDA; webdataset + DataLoader) at the training
             resolution and batch, and packing images/s
  step       the training step per process: fp32 / bf16 (/ fp16 on CUDA) at several batch sizes; FLOPs per
             image, utilisation of the measured matmul peak, peak memory
  baseline   the reference implementation's step (eager, same models and inputs) and its peers, interleaved with the
             step section: fp32 as written, bf16 autocast, bf16 autocast + channels_last, (CUDA) fp16 autocast +
             GradScaler (--no-peers: fp32 only). Headline: p2p_dist's default over the best peer; also over fp32
  breakdown  where a step's time goes: the default configuration and the best peer profiled a few steps each,
             split by the step's named ranges (G forward, D passes, backward, optimizer steps, ...), with the casts,
             host synchronisations and (from the loop section) the data wait; --profile adds traces and top ops
  loop       the real `launch/train.py` on the demo shards: images/s and data-wait share; on a CPU in 3 rounds,
             each followed by the peers in a process of their own (as a user runs them), ratios round by round
  scaling    1 vs 2 (..N GPUs) processes under `deepspeed --num_gpus N launch/train.py`
  candidates (not in the default set) each lever both ways: input and parameter layout, bf16 weights vs autocast,
             Adam kernel, 1-rank all-reduce, norm and joint D forward, threads, compile; the peers; Adam alone

Writes benchmarks/results/<machine>-<date>[-quick][-<sections>].json, .md and .png, and prints the Markdown.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# DeepSpeed builds its CPU communication op once per extensions dir; share the one `make install` built.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[1] / ".venv" / "torch_extensions"))

# The in-process sections run with the process settings launch/train.py runs with (re-executing if torch loaded).
from p2p_dist.process_defaults import apply_process_defaults

if __name__ == "__main__":
    apply_process_defaults()

import torch
from peer_process import measure_in_own_process, pooled_peers

import bench_common as common
import bench_report

SECTIONS = ("data", "step", "baseline", "breakdown", "loop", "scaling")
OPTIONAL_SECTIONS = ("candidates",)
TARGET_BATCH = 4  # the batch size of the speed-up targets against the reference recipe and its peers
# Issue 12's targets for the real loop at TARGET_BATCH, per CPU kind: (the peer's step it is measured against,
# the ratio to reach). "best peer" is the fastest reference peer measured in the same run.
LOOP_TARGETS = {
    "native-bf16 CPU": (("best peer", 1.3), ("reference eager fp32", 2.0)),
    "AVX2-only CPU": (("reference eager fp32", 1.3),),
}
GPU_UTILISATION_TARGET = 0.40  # of the bf16 matmul peak, at a batch of at least GPU_TARGET_MIN_BATCH
GPU_TARGET_MIN_BATCH = 32
CANDIDATE_GROUP = 5  # candidates measured interleaved with the default at a time
TARGET_DATA_WAIT = 0.02


@dataclass
class Plan:
    """How much of everything to measure on this machine (see ``make_plan``)."""

    quick: bool
    resolution: int
    model_overrides: list[str]
    step_batches: list[int]
    warmup: int
    repeats: int
    min_repeats: int
    budget_s: float
    max_step_s: float
    min_sample_s: float
    data_batch: int
    data_batches: int
    data_repeats: int
    data_warmup: int
    data_workers: int
    pack_images: int
    pack_size: tuple[int, int]
    pack_repeats: int
    run_batch: int
    loop_steps: int
    scaling_steps: int
    log_every: int
    scaling_processes: list[int]
    candidate_batch: int
    profile_steps: int
    run_timeout_s: float = 1800.0
    reference_peers: bool = True  # the baseline also measures the reference step's bf16/fp16/channels_last peers
    own_process_peers: bool = True  # the loop section also times the peers in a process of their own
    # The loop section's rounds, each the real loop then (own_process_peers) the peers in their own process: the
    # target's ratio from alternating runs, so that a slow or fast spell of the machine lands on both sides.
    loop_rounds: int = 1
    demo_scenes: tuple[int, int] | None = None  # (train, val) scenes of a temporary demo set; None: shards/demo


# `make gpu-check`'s one shot on a lent GPU (benchmarks/gpu_check.py): the paper's models at 256x256, batches 32
# and 64, sized to finish the step, baseline and loop sections in about 4 minutes on an H200 (unet_256 trains
# there at thousands of images/s: a step takes milliseconds, so repeats are short and few).
GPU_CHECK_BATCHES = [32, 64]
GPU_CHECK_DEMO_SCENES = (512, 16)  # 16 batches of 32 per epoch: epoch ends stay rare in a 60-step loop


def make_plan(device: torch.device, quick: bool, resolution: int, gpu_check: bool = False) -> Plan:
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    processes = sorted({1, 2, gpus}) if gpus > 2 else [1, 2]
    if quick:  # a tiny model on tiny data: exercises every code path in seconds
        plan = Plan(
            quick=True,
            resolution=128,
            model_overrides=["model.ngf=8", "model.ndf=8"],
            step_batches=[1, 2],
            warmup=1,
            repeats=2,
            min_repeats=2,
            budget_s=10,
            max_step_s=30,
            min_sample_s=0.0,
            data_batch=2,
            data_batches=3,
            data_repeats=2,
            data_warmup=1,
            data_workers=1,
            pack_images=4,
            pack_size=(128, 64),
            pack_repeats=1,
            run_batch=2,
            loop_steps=4,
            loop_rounds=2,
            scaling_steps=3,
            log_every=1,
            scaling_processes=[1, 2],
            candidate_batch=2,
            profile_steps=1,
            run_timeout_s=600,
        )
        if gpu_check:  # the dry run of gpu-check's plan: one batch size, one process per GPU
            plan = dataclasses.replace(
                plan,
                step_batches=[2],
                scaling_processes=[1, gpus] if gpus > 1 else [1],
                own_process_peers=False,
                loop_rounds=1,
            )
        return plan
    if gpu_check:
        if device.type != "cuda":
            raise SystemExit("--gpu-check sizes are for a CUDA device (add --quick for a dry run of the plan)")
        cores = os.cpu_count() or 1
        return Plan(
            quick=False,
            resolution=resolution,
            model_overrides=[],
            step_batches=list(GPU_CHECK_BATCHES),
            warmup=3,
            repeats=5,
            min_repeats=3,
            budget_s=8,
            max_step_s=30,
            min_sample_s=0.3,
            data_batch=GPU_CHECK_BATCHES[0],
            data_batches=30,
            data_repeats=2,
            data_warmup=3,
            data_workers=max(1, min(12, cores - 2)),
            pack_images=16,
            pack_size=(2048, 1024),
            pack_repeats=1,
            run_batch=GPU_CHECK_BATCHES[0],
            loop_steps=60,
            scaling_steps=40,
            log_every=10,
            scaling_processes=[1, gpus] if gpus > 1 else [1],
            candidate_batch=GPU_CHECK_BATCHES[0],
            profile_steps=3,
            run_timeout_s=100,
            reference_peers=True,
            own_process_peers=False,  # the loop part's time limit is tight; the step part measures the peers
            demo_scenes=GPU_CHECK_DEMO_SCENES,
        )
    if device.type == "cuda":
        return Plan(
            quick=False,
            resolution=resolution,
            model_overrides=[],
            step_batches=[1, 4, 16, 64],
            warmup=5,
            repeats=7,
            min_repeats=3,
            budget_s=30,
            max_step_s=60,
            min_sample_s=0.5,
            data_batch=16,
            data_batches=50,
            data_repeats=3,
            data_warmup=5,
            data_workers=4,
            pack_images=64,
            pack_size=(2048, 1024),
            pack_repeats=3,
            run_batch=16,
            loop_steps=60,
            scaling_steps=60,
            log_every=10,
            scaling_processes=processes,
            candidate_batch=16,
            profile_steps=5,
        )
    # CPU: one 256x256 image costs ~87 GFLOP per step, seconds on two cores. Budgets keep the whole run near
    # 10-15 minutes on a quiet 2-core machine; what they cut is recorded in the rows (n, skipped).
    # Without native bf16 units, bf16 steps (p2p_dist's and the peers') take ~55 s at batch 1 (slow reference
    # kernels): a 30 s step limit reports them from their first step and skips their larger batches.
    from p2p_dist.runtime import has_fast_bf16

    return Plan(
        quick=False,
        resolution=resolution,
        model_overrides=[],
        step_batches=[1, 4, 16],
        warmup=2,
        repeats=5,
        min_repeats=2,
        budget_s=40,
        max_step_s=60 if has_fast_bf16(device) else 30,
        min_sample_s=0.0,
        data_batch=TARGET_BATCH,
        data_batches=20,
        data_repeats=3,
        data_warmup=3,
        data_workers=2,
        pack_images=32,
        pack_size=(2048, 1024),
        pack_repeats=2,
        run_batch=TARGET_BATCH,
        loop_steps=30,  # ten records of 3 steps: the real loop is the target's numerator, so not a noisy 4
        loop_rounds=3,
        scaling_steps=9,
        log_every=3,
        scaling_processes=processes,
        candidate_batch=TARGET_BATCH,
        profile_steps=3,
    )


def step_plan(plan: Plan, batch_sizes: list[int]):
    from bench_step import StepPlan

    return StepPlan(
        resolution=plan.resolution,
        batch_sizes=batch_sizes,
        warmup=plan.warmup,
        repeats=plan.repeats,
        min_repeats=plan.min_repeats,
        budget_s=plan.budget_s,
        max_step_s=plan.max_step_s,
        min_sample_s=plan.min_sample_s,
        model_overrides=tuple(plan.model_overrides),
    )


class Suite:
    """Runs the chosen sections into one result dict. Sections that train in this process share one runtime
    (a process group of one), torn down before the subprocess sections start."""

    def __init__(self, args: argparse.Namespace, device: torch.device, plan: Plan, shards: Path | None) -> None:
        self.args, self.device, self.plan, self.shards = args, device, plan, shards
        self._runtime = None
        self._peaks: dict[str, dict] | None = None
        self.isolated_default: dict[int, float] = {}  # batch -> images/s of the default step, for the loop

    def runtime(self):
        if self._runtime is None:
            from p2p_dist.runtime import init_runtime

            from bench_step import config_for

            self._runtime = init_runtime(config_for(self.plan.resolution, 1, *self.plan.model_overrides))
        return self._runtime

    def peaks(self) -> dict[str, dict]:
        """Matmul peaks per precision, measured once per run."""
        if self._peaks is None:
            from bench_step import measure_peaks

            self._peaks = measure_peaks(self.device, self.plan.quick)
        return self._peaks

    def close_runtime(self) -> None:
        if self._runtime is not None:
            from p2p_dist.runtime import shutdown

            shutdown()
            self._runtime = None

    # ---------------------------------------------------------------------------------------------- data
    def data(self, record: dict) -> None:
        from bench_data import measure_loaders, measure_packing
        from bench_step import LOAD_SIZE_RATIO

        p = self.plan
        print(f"[data] loaders at {p.resolution}px, batch {p.data_batch}", flush=True)
        record["loaders"] = measure_loaders(
            self.shards,
            batch_size=p.data_batch,
            resolution=p.resolution,
            load_size=round(p.resolution * LOAD_SIZE_RATIO),
            batches=p.data_batches,
            repeats=p.data_repeats,
            warmup=p.data_warmup,
            num_workers=p.data_workers,
            device=self.device,
        )
        cores = os.cpu_count() or 1
        print(f"[data] packing {p.pack_images} synthetic {p.pack_size[0]}x{p.pack_size[1]} scenes", flush=True)
        record["packing"] = measure_packing(
            num_images=p.pack_images, image_size=p.pack_size, repeats=p.pack_repeats, workers_options=sorted({1, cores})
        )

    # ------------------------------------------------------------------------------- step and baseline
    def step_and_baseline(self, sections: dict, want_step: bool, want_baseline: bool) -> None:
        import bench_step as bs

        rt = self.runtime()
        record: dict = {}
        with common.load_recorded(record):
            variants = bs.precision_variants(self.device) if want_step else [bs.default_variant()]
            if want_baseline:
                variants += bs.reference_peers(self.device) if self.plan.reference_peers else [bs.reference_variant()]
            print(f"[step] building {len(variants)} variants", flush=True)
            built, unbuilt = [], []
            for v in variants:  # one variant that cannot be built (say, on a new GPU stack) leaves the others
                try:
                    built.append(
                        bs.build_variant(v, rt, self.plan.resolution, model_overrides=tuple(self.plan.model_overrides))
                    )
                except Exception as exc:
                    message = f"failed to build: {type(exc).__name__}: {exc}"[:300]
                    print(f"  {v.name}: {message}", flush=True)
                    unbuilt += bs.failed_rows(v, self.plan.step_batches, message)
            print(f"[step] interleaved measurement at batch sizes {self.plan.step_batches}", flush=True)
            rows = (
                bs.measure_variants(
                    built,
                    step_plan(self.plan, self.plan.step_batches),
                    self.device,
                    log=lambda line: print(line, flush=True),
                )
                + unbuilt
            )
            peaks = self.peaks()
            bs.add_utilisation(rows, peaks)
            del built
            gc.collect()  # DeepSpeed engines hold reference cycles: free their memory before the next section
        defaults = {r["batch_size"]: r for r in rows if r["default"] and "images_per_s" in r}
        self.isolated_default = {b: r["images_per_s"]["median"] for b, r in defaults.items()}
        notes = []
        if any(r.get("utilisation", 0) > 1 for r in rows):
            notes.append(
                "utilisation above 100%: that precision's matmul is slower on this device than its "
                "convolutions, so the matmul figure is no upper bound there"
            )
        if not bs.has_fast_bf16(self.device):
            notes.append(
                "this device has no native bf16 units: bf16 autocast falls back to slow reference kernels, "
                "so precision=auto resolves to fp32 here; bf16 is measured with as few steps as the "
                "budget allows (rows say n and whether the step was warmed up)"
            )
        if want_step:
            sections["step"] = {
                **record,
                "rows": [r for r in rows if r["implementation"] == "p2p_dist"],
                "peaks": peaks,
                "notes": notes,
            }
        if want_baseline:
            reference_name = bs.reference_variant().name
            reference = {r["batch_size"]: r for r in rows if r["variant"] == reference_name}
            comparison = []
            for batch_size in self.plan.step_batches:
                ref, default = reference.get(batch_size, {}), defaults.get(batch_size, {})
                ratio = (
                    default["images_per_s"]["median"] / ref["images_per_s"]["median"]
                    if "images_per_s" in ref and "images_per_s" in default
                    else None
                )
                comparison.append(
                    {
                        "batch_size": batch_size,
                        "reference": ref.get("images_per_s"),
                        "default": default.get("images_per_s"),
                        "default_precision": default.get("precision", "-"),
                        "ratio": ratio,
                    }
                )
            sections["baseline"] = {
                **record,
                "comparison": comparison,
                "reference_rows": list(reference.values()),
                "measured_with": "step" if want_step else "baseline",
                "recipe": bs.ReferenceStep.__doc__.split("\n\n")[0],
            }
            if self.plan.reference_peers:
                peer_rows = [r for r in rows if r["implementation"] == "reference"]
                sections["baseline"]["peer_rows"] = peer_rows
                sections["baseline"]["peers"] = peer_comparison(peer_rows, defaults)
                sections["baseline"]["headline"] = headline_rows(sections["baseline"]["peers"], comparison)

    # ---------------------------------------------------------------------------------------- real runs
    def _run_config(self, steps: int):
        from bench_step import config_for

        p = self.plan
        cfg = config_for(
            p.resolution,
            p.run_batch,
            *p.model_overrides,
            f"data.shards={self.shards}",
            f"data.loader={common.training_loader()}",
            f"data.num_workers={p.data_workers}",
            f"run.log_every={p.log_every}",
            "run.sample_every=1000000",
            "run.checkpoint_every=1000000",
            "eval.every=0",
        )
        cfg.train.steps = steps
        return cfg

    def loop(self, record: dict) -> None:
        from bench_runs import pooled, run_training

        p = self.plan
        cfg = self._run_config(p.loop_steps)
        record["loader"] = cfg.data.loader
        rounds = []
        for index in range(p.loop_rounds):
            print(
                f"[loop] round {index + 1}/{p.loop_rounds}: launch/train.py, {p.loop_steps} steps at batch "
                f"{p.run_batch}, data.loader={cfg.data.loader}, {p.data_workers} worker(s)",
                flush=True,
            )
            this_round = {"run": run_training(cfg, 1, "python", p.run_timeout_s)}
            if p.own_process_peers:
                print(
                    f"[loop] round {index + 1}/{p.loop_rounds}: the reference peers in a process of their own, "
                    "as a user runs them",
                    flush=True,
                )
                this_round["peers_in_own_process"] = measure_in_own_process(
                    p.run_batch,
                    p.resolution,
                    p.model_overrides,
                    steps=p.repeats + 3,
                    warmup=2,
                    timeout_s=p.run_timeout_s,
                )
            rounds.append(this_round)
        record["rounds"] = rounds
        record["run"] = pooled([r["run"] for r in rounds])
        if p.own_process_peers:
            record["peers_in_own_process"] = pooled_peers([r["peers_in_own_process"] for r in rounds])
        isolated = self.isolated_default.get(p.run_batch)
        if isolated:
            record["vs_isolated_step"] = record["run"]["images_per_s"]["median"] / isolated

    def scaling(self, record: dict) -> None:
        from bench_runs import run_training, scaling_rows

        p = self.plan
        runs = []
        for n in p.scaling_processes:
            print(
                f"[scaling] deepspeed --num_gpus {n}, {p.scaling_steps} steps at batch {p.run_batch} per process",
                flush=True,
            )
            runs.append(run_training(self._run_config(p.scaling_steps), n, "deepspeed", p.run_timeout_s))
        gpus = torch.cuda.device_count() if self.device.type == "cuda" else 0
        record["runs"] = runs
        record["rows"] = scaling_rows(runs, os.cpu_count() or 1, gpus)
        record["note"] = "Efficiency = images/s(N) / (N x images/s(1)), batch per process fixed. " + (
            "Each process has its own GPU."
            if gpus
            else f"CPU processes share the same {os.cpu_count()} cores (each rank gets cores/N "
            "threads), so the hardware does not grow with N: ideal here is a speed-up of 1.0x, "
            "and what is lost below it is communication and per-process overhead. A speed-up "
            "above 1.0x means one process with several threads used the cores less well than "
            "several single-thread processes (threads waiting for each other on a busy machine)."
        )

    # ---------------------------------------------------------------------------------------- candidates
    def candidates(self, record: dict) -> None:
        """Each candidate against the default, in groups of CANDIDATE_GROUP interleaved with a default of their own
        (every variant holds a whole pair of networks and their optimizers: all at once would not fit a small
        machine's memory). A variant's ratio to the default is taken within its group."""
        import bench_step as bs

        rt = self.runtime()
        default, *others = bs.candidate_variants(self.device, with_compile=self.args.compile)
        groups = [others[i : i + CANDIDATE_GROUP] for i in range(0, len(others), CANDIDATE_GROUP)]
        print(
            f"[candidates] {len(others)} variants against the default at batch {self.plan.candidate_batch}, in "
            f"{len(groups)} interleaved groups",
            flush=True,
        )
        record["rows"] = []
        for index, group in enumerate(groups, 1):
            print(f"[candidates] group {index}/{len(groups)}", flush=True)
            built, rows = [], []
            for v in (default, *group):
                try:
                    built.append(
                        bs.build_variant(v, rt, self.plan.resolution, model_overrides=tuple(self.plan.model_overrides))
                    )
                except Exception as exc:
                    rows += bs.failed_rows(v, [self.plan.candidate_batch], f"failed to build: {exc}"[:300])
            rows = (
                bs.measure_variants(
                    built,
                    step_plan(self.plan, [self.plan.candidate_batch]),
                    self.device,
                    log=lambda line: print(line, flush=True),
                )
                + rows
            )
            del built
            gc.collect()
            bs.add_utilisation(rows, self.peaks())
            group_default = next(r for r in rows if r["default"])
            for r in rows:
                r["group"] = index
                if "images_per_s" in r and "images_per_s" in group_default:
                    r["vs_default"] = r["images_per_s"]["median"] / group_default["images_per_s"]["median"]
                    r["cpu_vs_default"] = r["cpu_s_per_image"]["median"] / group_default["cpu_s_per_image"]["median"]
            group_default["variant"] += f" (group {index})"
            record["rows"] += rows
        print("[candidates] Adam implementations", flush=True)
        cfg = bs.config_for(self.plan.resolution, 1, *self.plan.model_overrides)
        record["adam"] = bs.measure_adam(cfg, self.device, repeats=max(3, self.plan.repeats))

    # ----------------------------------------------------------------------------------------- breakdown
    def breakdown(self, record: dict, sections: dict, stem: str) -> None:
        """Where a step's time goes: the default configuration and the best reference peer (the fastest peer
        the baseline measured at this batch; without a baseline, the one expected fastest on this device),
        profiled for a few steps each and split by the step's named ranges. With --profile, also a Chrome trace
        and the top ops of each."""
        import bench_step as bs

        rt = self.runtime()
        batch, steps = self.plan.candidate_batch, self.plan.profile_steps
        peer, chosen_by = best_peer(sections.get("baseline"), batch, self.device)
        record.update(batch_size=batch, steps=steps, best_peer=peer.name, best_peer_chosen_by=chosen_by, variants=[])
        for variant in (bs.default_variant(), peer):
            print(f"[breakdown] {variant.name}: {steps} profiled step(s) at batch {batch}", flush=True)
            built = bs.build_variant(
                variant, rt, self.plan.resolution, model_overrides=tuple(self.plan.model_overrides)
            )
            trace = self.args.out / "traces" / f"{stem}-{common.slug(variant.name)}.json" if self.args.profile else None
            profiled = bs.profile_steps(built, batch, self.plan.resolution, self.device, steps, trace)
            if "table" in profiled:
                print(profiled.pop("table"), flush=True)
            record["variants"].append(profiled)
            del built
            gc.collect()


def best_peer(baseline: dict | None, batch_size: int, device: torch.device):
    """(the reference peer to beat at ``batch_size``, how it was chosen): the fastest peer the baseline measured
    there; without one, the peer expected fastest here (bf16 autocast + channels_last where bf16 is native,
    else the fp32 reference)."""
    import bench_step as bs

    peers = {v.name: v for v in bs.reference_peers(device)}
    measured = [
        r
        for r in (baseline or {}).get("peers", [])
        if r["batch_size"] == batch_size and r.get("images_per_s") and r["peer"] in peers
    ]
    if measured:
        best = max(measured, key=lambda r: r["images_per_s"]["median"])
        return peers[best["peer"]], f"fastest peer measured by the baseline at batch {batch_size}"
    name = "reference + bf16 autocast + channels_last" if bs.has_fast_bf16(device) else bs.reference_variant().name
    return peers[name], "expected fastest here (the baseline did not measure the peers at this batch)"


def attach_data_wait(result: dict) -> None:
    """The real loop's data wait, per step, as the breakdown's last row: the one part of the loop's time that the
    isolated steps of the breakdown cannot show."""
    breakdown, loop = result["sections"].get("breakdown"), result["sections"].get("loop")
    if not breakdown or not loop:
        return
    run = loop["run"]
    fraction = run["data_wait_fraction"]["median"]
    loop_step_ms = 1e3 * run["batch_size_per_process"] / run["images_per_s"]["median"]
    breakdown["data_wait"] = {
        "fraction": fraction,
        "ms": fraction * loop_step_ms,
        "loop_step_ms": loop_step_ms,
        "batch_size": run["batch_size_per_process"],
        "precision": run["precision"],
    }


def fp32_ceiling(result: dict) -> float | None:
    """How many times the reference's speed at the target batch a step of the same FLOPs would reach if all of
    it ran at the device's fp32 matmul peak: the bound on any speed-up that keeps the reference's fp32 maths."""
    peak = result["sections"].get("step", {}).get("peaks", {}).get("fp32")
    reference = next(
        (
            r
            for r in result["sections"].get("baseline", {}).get("reference_rows", [])
            if r["batch_size"] == TARGET_BATCH and "images_per_s" in r
        ),
        None,
    )
    if not peak or reference is None:
        return None
    return peak["peak_flops"] / (reference["flops_per_image"] * reference["images_per_s"]["median"])


def peer_comparison(peer_rows: list[dict], defaults: dict[int, dict]) -> list[dict]:
    """Per reference peer and batch size: its images/s and the p2p_dist default's over it."""
    out = []
    for r in peer_rows:
        default = defaults.get(r["batch_size"], {})
        ratio = (
            default["images_per_s"]["median"] / r["images_per_s"]["median"]
            if "images_per_s" in r and "images_per_s" in default
            else None
        )
        out.append(
            {
                "peer": r["variant"],
                "precision": r["precision"],
                "batch_size": r["batch_size"],
                "images_per_s": r.get("images_per_s"),
                "default": default.get("images_per_s"),
                "default_precision": default.get("precision", "-"),
                "ratio": ratio,
                "utilisation_of_bf16_peak": r.get("utilisation_of_bf16_peak"),
                "skipped": r.get("skipped"),
            }
        )
    return out


def headline_rows(peers: list[dict], comparison: list[dict]) -> list[dict]:
    """Per batch size: the default configuration's step against the fastest reference peer measured there (the
    headline), and against the fp32 reference step."""
    out = []
    for c in comparison:
        measured = [p for p in peers if p["batch_size"] == c["batch_size"] and p.get("images_per_s")]
        best = max(measured, key=lambda p: p["images_per_s"]["median"], default=None)
        vs_best = (
            c["default"]["median"] / best["images_per_s"]["median"] if best is not None and c.get("default") else None
        )
        out.append(
            {
                "batch_size": c["batch_size"],
                "default": c.get("default"),
                "default_precision": c.get("default_precision", "-"),
                "best_peer": best["peer"] if best else None,
                "best_peer_images_per_s": best["images_per_s"] if best else None,
                "vs_best_peer": vs_best,
                "vs_fp32_reference": c.get("ratio"),
            }
        )
    return out


def device_kind(machine: dict) -> str:
    """The kind of machine the targets are set for: CUDA, a native-bf16 CPU or an AVX2-only CPU (by the CPU
    flags the run's automatic choices read, so a run with simulated flags is judged as that kind)."""
    if machine.get("gpus"):
        return "CUDA"
    return "native-bf16 CPU" if machine.get("cpu_native_bf16") else "AVX2-only CPU"


def evaluate_targets(result: dict) -> list[dict]:
    """The targets the project set, against what this run measured (met: None for figures reported, not judged)."""
    sections, targets = result["sections"], []
    kind = device_kind(result.get("machine", {}))
    baseline = sections.get("baseline") or {}
    head = next((r for r in baseline.get("headline", []) if r["batch_size"] == TARGET_BATCH), None)
    if head and head["vs_best_peer"] is not None:
        targets.append(
            {
                "target": f"headline: the default configuration's step over the best peer's at batch {TARGET_BATCH}",
                "measured": f"{head['vs_best_peer']:.2f}x (best peer: {head['best_peer']})",
                "met": None,
            }
        )
    row = next((r for r in baseline.get("comparison", []) if r["batch_size"] == TARGET_BATCH), None)
    if row and row["ratio"] is not None:
        measured = f"{row['ratio']:.2f}x"
        ceiling = fp32_ceiling(result)
        if ceiling is not None:
            measured += (
                f"; at unchanged fp32 maths at most {ceiling:.2f}x here (the fp32 matmul peak over the "
                f"reference's FLOP/s: every op of the step at matmul speed)"
            )
        targets.append(
            {
                "target": f"the default configuration's step over the eager fp32 reference's at batch {TARGET_BATCH}",
                "measured": measured,
                "met": None,
            }
        )
    targets += loop_targets(sections, kind)
    if kind == "CUDA":
        targets += gpu_utilisation_targets(sections)
    loop = sections.get("loop")
    if loop:
        wait = loop["run"]["data_wait_fraction"]["median"]
        targets.append(
            {
                "target": f"data wait < {100 * TARGET_DATA_WAIT:.0f}% of the real loop's wall time",
                "measured": f"{100 * wait:.2f}% (max {100 * loop['run']['data_wait_fraction']['max']:.2f}%)",
                "met": wait < TARGET_DATA_WAIT,
            }
        )
    scaling = sections.get("scaling")
    if scaling:
        top = scaling["rows"][-1]
        targets.append(
            {
                "target": "scaling efficiency reported honestly",
                "measured": f"{top['processes']} processes: {top['speedup']:.2f}x speed-up, "
                f"{100 * top['efficiency']:.0f}% efficiency",
                "met": None,
            }
        )
    return targets


def loop_targets(sections: dict, kind: str) -> list[dict]:
    """Issue 12's target 2: the real loop's images/s over the step of the best peer and of the fp32 reference, at
    the same batch, as set for this kind of CPU; against the peers measured in the benchmark's process (with
    p2p_dist's process defaults) and against them in a process of their own, as a user runs them."""
    loop, baseline = sections.get("loop"), sections.get("baseline") or {}
    if not loop or kind not in LOOP_TARGETS:
        return []
    batch = loop["run"]["batch_size_per_process"]
    peers = {p["peer"]: p for p in bench_report.in_process_peers_at(baseline, batch)}
    reference = next(
        (r for r in baseline.get("reference_rows", []) if r["batch_size"] == batch and r.get("images_per_s")), None
    )
    if reference is not None:
        peers.setdefault(
            reference["variant"], {"peer": reference["variant"], "images_per_s": reference["images_per_s"]}
        )
    targets = _loop_targets_against(loop, kind, peers, "")
    own_process = {p["peer"]: p for p in loop.get("peers_in_own_process", [])}
    if own_process:
        targets += _loop_targets_against(loop, kind, own_process, " (peer in its own process, as a user runs it)")
    return targets


def _loop_targets_against(loop: dict, kind: str, peers: dict[str, dict], where: str) -> list[dict]:
    run = loop["run"]
    batch, rate = run["batch_size_per_process"], run["images_per_s"]["median"]
    best = max(peers.values(), key=lambda p: p["images_per_s"]["median"], default=None)
    out = []
    for against, goal in LOOP_TARGETS[kind]:
        peer = best if against == "best peer" else peers.get(against)
        target = f"{kind}: the real loop >= {goal}x the {against}'s step at batch {batch}{where}"
        if peer is None:
            out.append({"target": target, "measured": "not measured (run the baseline with its peers)", "met": None})
            continue
        ratio = rate / peer["images_per_s"]["median"]
        named = f", {peer['peer']}" if against == "best peer" else ""
        out.append(
            {
                "target": target,
                "measured": f"{ratio:.2f}x ({rate:.2f} vs {peer['images_per_s']['median']:.2f} images/s{named})",
                "met": ratio >= goal,
            }
        )
    return out


def gpu_utilisation_targets(sections: dict) -> list[dict]:
    """Issue 12's GPU target: the default step's FLOP/s over the bf16 matmul peak at a batch of 32 or more."""
    rows = [
        r
        for r in sections.get("step", {}).get("rows", [])
        if r["default"] and r["batch_size"] >= GPU_TARGET_MIN_BATCH and "utilisation_of_bf16_peak" in r
    ]
    if not rows:
        return []
    best = max(rows, key=lambda r: r["utilisation_of_bf16_peak"])
    return [
        {
            "target": f"GPU: >= {100 * GPU_UTILISATION_TARGET:.0f}% of the bf16 matmul peak at batch >= "
            f"{GPU_TARGET_MIN_BATCH}",
            "measured": f"{100 * best['utilisation_of_bf16_peak']:.1f}% at batch {best['batch_size']}",
            "met": best["utilisation_of_bf16_peak"] >= GPU_UTILISATION_TARGET,
        }
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model and data (for tests/CI)")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated, from {', '.join(SECTIONS + OPTIONAL_SECTIONS)}",
    )
    parser.add_argument(
        "--resolution",
        type=int,
        default=256,
        choices=(128, 256, 512),
        help="training resolution (the paper's: 256); --quick uses 128",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="the breakdown (implied) with a Chrome trace and the top ops of the default "
        "configuration's and the best peer's profiled steps",
    )
    parser.add_argument("--compile", action="store_true", help="include torch.compile among the candidates (slow)")
    parser.add_argument(
        "--no-peers",
        action="store_true",
        help="baseline: the fp32 reference step alone, without its peers (bf16 autocast, + "
        "channels_last, (CUDA) fp16 autocast + GradScaler); the headline needs them",
    )
    parser.add_argument(
        "--gpu-check",
        action="store_true",
        help="the sizes of `make gpu-check` (CUDA; batches 32 and 64, peers, a small demo set); "
        "with --quick a tiny dry run of that plan on any device",
    )
    parser.add_argument("--stem", default=None, help="results file name without extension (default: machine-date...)")
    parser.add_argument(
        "--shards",
        type=Path,
        default=None,
        help="shard set for the data, loop and scaling sections (default: shards/demo, built if "
        "missing; --quick: a tiny temporary set)",
    )
    parser.add_argument("--out", type=Path, default=common.RESULTS_DIR, help="results directory")
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS + OPTIONAL_SECTIONS]
    if unknown:
        parser.error(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS + OPTIONAL_SECTIONS)}")
    return args


def resolve_shards(args: argparse.Namespace, plan: Plan, tmp: Path) -> Path:
    """--shards, else a tiny temporary set (--quick), else the plan's temporary demo set (--gpu-check), else
    shards/demo: used as it is when present (as launch/train.py does: other runs may be reading it), built when
    missing."""
    if args.shards is not None:
        return args.shards
    from p2p_dist.data.demo.shard_set import ensure_demo_shards
    from p2p_dist.data.shards.format import MANIFEST_NAME

    from bench_data import tiny_demo_shards

    if args.quick:
        return tiny_demo_shards(tmp / "demo")
    if plan.demo_scenes:
        num_train, num_val = plan.demo_scenes
        print(f"[shards] demo set of {num_train} + {num_val} scenes in {tmp / 'demo'}", flush=True)
        return ensure_demo_shards(
            tmp / "demo", num_train=num_train, num_val=num_val, workers=os.cpu_count(), progress=False
        )
    demo = common.REPO_ROOT / "shards" / "demo"
    return demo if (demo / MANIFEST_NAME).is_file() else ensure_demo_shards(demo)


def result_stem(machine: str, date: str, quick: bool, sections: list[str]) -> str:
    stem = f"{machine}-{date}" + ("-quick" if quick else "")
    return stem if sections == list(SECTIONS) else f"{stem}-{'-'.join(sections)}"


def unused_stem(out: Path, stem: str) -> str:
    """`stem`, or `stem-2`, `stem-3`, ... where results of that name are already in `out`: a second run of the same
    sections on the same day must not overwrite the first one's (committed) results."""
    names = itertools.chain([stem], (f"{stem}-{n}" for n in itertools.count(2)))
    return next(name for name in names if not any((out / f"{name}.{ext}").exists() for ext in ("json", "md", "png")))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    plan = make_plan(device, args.quick, args.resolution, gpu_check=args.gpu_check)
    if args.no_peers:
        plan.reference_peers = False
    facts = common.machine_facts()
    machine = common.machine_name(facts)
    date = common.today()
    stem = args.stem or unused_stem(args.out, result_stem(machine, date, args.quick, args.sections))
    result = {
        "machine_name": machine,
        "date": date,
        "machine": facts,
        "plan": dataclasses.asdict(plan),
        "command": " ".join([Path(sys.executable).name, "benchmarks/run.py", *(argv or sys.argv[1:])]),
        "load_start": common.load_average(),
        "sections": {},
    }
    with tempfile.TemporaryDirectory(prefix="p2p-bench-") as tmp:
        needs_shards = any(s in args.sections for s in ("data", "loop", "scaling"))
        shards = resolve_shards(args, plan, Path(tmp)) if needs_shards else None
        suite = Suite(args, device, plan, shards)
        sections = result["sections"]
        try:
            if "data" in args.sections:
                with common.load_recorded(sections.setdefault("data", {})) as record:
                    suite.data(record)
            if "step" in args.sections or "baseline" in args.sections:
                suite.step_and_baseline(sections, "step" in args.sections, "baseline" in args.sections)
            if "candidates" in args.sections:
                with common.load_recorded(sections.setdefault("candidates", {})) as record:
                    suite.candidates(record)
            if "breakdown" in args.sections or args.profile:
                with common.load_recorded(sections.setdefault("breakdown", {})) as record:
                    suite.breakdown(record, sections, stem)
        finally:
            suite.close_runtime()
        for name, method in (("loop", suite.loop), ("scaling", suite.scaling)):
            if name in args.sections:
                with common.load_recorded(sections.setdefault(name, {})) as record:
                    method(record)
    attach_data_wait(result)
    result["load_end"] = common.load_average()
    result["targets"] = evaluate_targets(result)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str))
    report = bench_report.markdown(result)
    (args.out / f"{stem}.md").write_text(report + "\n")
    plotted = bench_report.plot(result, args.out / f"{stem}.png")
    print(report)
    print(f"results: {args.out / stem}.json / .md" + (" / .png" if plotted else " (no plotted section, no .png)"))
    return result


if __name__ == "__main__":
    main()
