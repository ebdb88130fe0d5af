"""Checkpoints that survive preemption: both engines, every rank's RNG, and the data position.

Contents of a checkpoint ``RUN/checkpoints/step_NNNNNN/`` (where it lives, the ``latest`` pointer and the
partial-write name: p2p_dist.run_dir)::

    G/ D/          DeepSpeed engine checkpoints (each engine in its own directory, or D overwrites G)
    rng/           one file per rank: torch (CPU and CUDA), numpy and python RNG states
    trainer.json   step, data position, world size, images seen (written last: it marks the checkpoint complete)

What this module reads itself (trainer.json, the RNG files, the weights for evaluation and translation) it reads
as JSON, tensors and plain values only (p2p_dist.safe_load): a run directory from elsewhere cannot run code
through them. Resuming also loads both engines through DeepSpeed, which unpickles its files in full: resume only
run directories you trust.

A checkpoint is written under ``.partial-step_NNNNNN`` and renamed only after every rank has finished,
then ``latest`` is replaced atomically: a kill at any moment leaves the previous checkpoint loadable.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from p2p_dist.errors import BadFileError, UserError
from p2p_dist.run_dir import (
    TRAINER_STATE_NAME,
    checkpoint_name,
    partial_checkpoint,
    partial_checkpoints,
    step_checkpoints,
    write_latest,
)
from p2p_dist.safe_load import load_tensors

ENGINE_TAG = "engine"
# What numpy's RNG state (a uint32 array) unpickles through, besides tensors and plain values.
_NUMPY_UINT32_ARRAY = (np.zeros(0, np.uint32).__reduce__()[0], np.ndarray, np.dtype, type(np.dtype(np.uint32)))


class ResumeError(UserError, RuntimeError):
    """A checkpoint that cannot be resumed with the current settings; the message says which would work."""


@dataclass
class TrainerState:
    step: int = 0  # optimiser steps done
    epoch: int = 0  # data position: epoch ...
    batch_in_epoch: int = 0  # ... and micro-batches of it already consumed, per rank
    images_seen: int = 0  # over all ranks
    world_size: int = 1
    batch_size: int = 1
    zero_stage: int = 0
    elapsed_s: float = 0.0  # training wall time before this process started


def save_rng_state(path: Path) -> None:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    torch.save(state, path)


def restore_rng_state(path: Path) -> None:
    """Set this process's torch, numpy, python (and CUDA) RNGs from a file written by `save_rng_state`."""
    state = load_tensors(path, allow=_NUMPY_UINT32_ARRAY)
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(ckpt_root: Path, model, state: TrainerState, keep: int, rank: int) -> Path:
    """Every rank calls this (DeepSpeed saves are collective)."""
    name = checkpoint_name(state.step)
    partial = partial_checkpoint(ckpt_root, name)
    if rank == 0:
        shutil.rmtree(partial, ignore_errors=True)
        (partial / "rng").mkdir(parents=True)
    dist.barrier()
    model.G.save_checkpoint(str(partial / "G"), tag=ENGINE_TAG, save_latest=False)
    model.D.save_checkpoint(str(partial / "D"), tag=ENGINE_TAG, save_latest=False)
    save_rng_state(partial / "rng" / f"rank_{rank:05d}.pt")
    dist.barrier()
    final = ckpt_root / name
    if rank == 0:
        (partial / TRAINER_STATE_NAME).write_text(json.dumps(asdict(state), indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        write_latest(ckpt_root, name)
        for old in step_checkpoints(ckpt_root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def load(path: Path, model, rank: int, world_size: int, batch_size: int) -> TrainerState:
    """Restore both engines (weights, optimizer, lr schedule, loss scale) and this rank's RNG."""
    state = TrainerState(**json.loads((path / TRAINER_STATE_NAME).read_text()))
    if state.zero_stage != model.cfg.zero_stage:
        raise ResumeError(
            f"{path} was written at ZeRO stage {state.zero_stage}; resuming at zero_stage={model.cfg.zero_stage} "
            f"cannot load its optimizer state. Resume with zero_stage={state.zero_stage}, or start a new run.dir."
        )
    if state.world_size != world_size and state.zero_stage > 0:
        raise ResumeError(
            f"{path} was written by {state.world_size} ranks at ZeRO stage {state.zero_stage}; its optimizer state "
            f"is partitioned and cannot be loaded by {world_size} ranks. Resume with {state.world_size} ranks, or "
            f"train with zero_stage=0, whose checkpoints load at any world size."
        )
    for engine, sub in ((model.G, "G"), (model.D, "D")):
        load_path, _ = engine.load_checkpoint(
            str(path / sub), tag=ENGINE_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if load_path is None:
            raise FileNotFoundError(f"no {sub} engine checkpoint under {path / sub}")
    rng_file = path / "rng" / f"rank_{rank:05d}.pt"
    if rng_file.is_file():
        restore_rng_state(rng_file)
    if (state.world_size, state.batch_size) != (world_size, batch_size):
        # Same samples, regrouped: continue after the images already consumed in this epoch.
        consumed = state.batch_in_epoch * state.batch_size * state.world_size
        state.batch_in_epoch = consumed // (batch_size * world_size)
        state.world_size, state.batch_size = world_size, batch_size
    return state


MODULE_WEIGHTS = "module weights (fp32)"
MASTER_WEIGHTS = "fp32 master weights from the DeepSpeed optimizer states (the module holds fp16/bf16 copies)"
HALF_MODULE_WEIGHTS = "fp16/bf16 module weights (the checkpoint holds no fp32 master copy)"


def load_weights(path: Path, network: str) -> dict:
    """The state dict of network "G" or "D" from a checkpoint directory, without DeepSpeed engines (for
    evaluation, translation and export): the module's weights, except where the module holds fp16/bf16 copies
    (precision=fp16: DeepSpeed casts the module to half and keeps the fp32 master weights in the ZeRO optimizer
    state files, ``zero_pp_rank_*_optim_states.pt``): then the fp32 masters, merged over the ranks' partitions
    by DeepSpeed's own zero_to_fp32 reader (buffers, e.g. batch-norm statistics, exist only in the module)."""
    return load_weights_and_source(path, network)[0]


def load_weights_and_source(path: Path, network: str) -> tuple[dict, str]:
    """`load_weights` and which copy it read (`MODULE_WEIGHTS`, `MASTER_WEIGHTS` or `HALF_MODULE_WEIGHTS`)."""
    engine_dir = path / network / ENGINE_TAG
    files = sorted(engine_dir.glob("mp_rank_*_model_states.pt"))
    if not files:
        raise FileNotFoundError(f"no {network} weights under {engine_dir}")
    states = load_tensors(files[0])
    if not isinstance(states, dict) or "module" not in states:
        raise BadFileError(f"{files[0]}: no 'module' weights in it: not a DeepSpeed model checkpoint")
    module = states["module"]
    if not any(t.dtype in (torch.float16, torch.bfloat16) for t in module.values()):
        return module, MODULE_WEIGHTS
    if not any(engine_dir.glob("*_optim_states.pt")):
        return module, HALF_MODULE_WEIGHTS
    return _zero_master_weights(path / network), MASTER_WEIGHTS


def _zero_master_weights(engine_root: Path) -> dict:
    import contextlib
    import io

    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    # The reader prints what it parses and draws a progress bar: not the caller's business.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return dict(get_fp32_state_dict_from_zero_checkpoint(str(engine_root), tag=ENGINE_TAG))


def clean_partial(ckpt_root: Path) -> None:
    """Remove what a kill during a checkpoint write left behind (never a complete checkpoint)."""
    for partial in partial_checkpoints(ckpt_root):
        shutil.rmtree(partial, ignore_errors=True)
