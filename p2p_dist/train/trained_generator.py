"""The generator a training run produced, read back from its run directory without DeepSpeed: what
evaluation, translation and export start from."""

from __future__ import annotations

from pathlib import Path

import torch

from p2p_dist.config import Config
from p2p_dist.errors import BadFileError
from p2p_dist.models import UNetGenerator, generator_for
from p2p_dist.run_dir import RunDir, resolve_checkpoint
from p2p_dist.runtime import default_device
from p2p_dist.train.checkpoint import load_weights_and_source


def load_generator(
    run_dir: str | Path, checkpoint: str | Path | None = None, device: str | torch.device | None = None
) -> tuple[UNetGenerator, Config]:
    """The generator of a training run directory (written by launch/train.py) and the run's config.

    `checkpoint`: None for the latest, a tag such as ``step_000500``, or a checkpoint directory. `device`:
    None picks cuda when available. The generator is returned in eval mode (called bare, batch norm would use its
    running statistics: translate under p2p_dist.models.translation_modes for the paper's per-image statistics),
    in fp32; weights are loaded without DeepSpeed engines, so any ZeRO stage <= 2 and any world size work. An
    fp16 run's generator gets its fp32 master weights (see `p2p_dist.train.checkpoint.load_weights`);
    ``generator.weights_source`` says which copy was read.
    """
    run = RunDir(run_dir)
    cfg = run.read_config()
    ckpt = resolve_checkpoint(run_dir, checkpoint)
    generator = generator_for(cfg)
    weights, source = load_weights_and_source(ckpt, "G")
    try:
        generator.load_state_dict(weights)
    except RuntimeError as err:
        detail = " ".join(str(err).split())  # torch lists every mismatched key on its own line
        detail = detail if len(detail) <= 300 else detail[:300] + " ..."
        raise BadFileError(f"{ckpt}: G weights do not fit the generator described by {run.config}: {detail}") from None
    generator.to(torch.device(device) if device is not None else default_device())
    generator.weights_source = source
    return generator.eval(), cfg
