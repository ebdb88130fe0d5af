"""The front of the loaders: a run's loader options from its config, and ``build_loader``.

    options = loader_options(cfg.data, batch_size=16, train=True, seed=cfg.seed, rank=r, world_size=w,
                             device=torch.device("cuda", local_rank))
    loader = build_loader("shards/demo", "train", options)
    for batch in loader.epoch(epoch):  # the batches of contract.py
        ...

Backends are imported when a loader is built, so importing this module loads neither DALI nor webdataset:

* ``backend="dali"`` (``dali``): NVIDIA DALI decodes, resizes, crops, flips, normalises and encodes the labels;
  on the GPU of ``device`` when it is a CUDA device, on the CPU otherwise.
* ``backend="webdataset"`` (``webdataset``): webdataset's tar reader and decoders in torch DataLoader worker
  processes, for machines without DALI.
"""

from __future__ import annotations

from pathlib import Path

import torch

from p2p_dist.config import DataConfig
from p2p_dist.data.loaders.contract import CPU, LoaderOptions, ShardLoader


def loader_options(
    data: DataConfig,
    *,
    batch_size: int,
    train: bool,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device = CPU,
    num_workers: int | None = None,
    holdout_only: bool = False,
) -> LoaderOptions:
    """A run's loader options: the config's data section (backend, sizes, flip, label encoding, workers) plus
    what differs between a run's loaders. ``train=False`` gives evaluation geometry (no shuffling, images
    resized straight to ``data.crop_size``); ``num_workers`` replaces ``data.num_workers`` when given.

    ``data.holdout`` (train-split samples held out, see p2p_dist.data.holdout): a training loader
    (``train=True``, for the train split) skips them; ``holdout_only=True`` reads just them (for the train
    split); other loaders ignore it."""
    return LoaderOptions(
        batch_size=batch_size,
        backend=data.loader,
        rank=rank,
        world_size=world_size,
        seed=seed,
        train=train,
        load_size=data.load_size,
        crop_size=data.crop_size,
        flip=data.flip,
        label_encoding=data.label_encoding,
        device=device,
        num_workers=data.num_workers if num_workers is None else num_workers,
        prefetch=data.prefetch,
        holdout=data.holdout if train or holdout_only else 0,
        holdout_only=holdout_only,
    )


def build_loader(shards_dir: Path | str, split: str, options: LoaderOptions | None = None, **fields) -> ShardLoader:
    """Open ``split`` of the shard set in ``shards_dir`` with ``options.backend`` (see module docstring).

    Pass ``options`` (a run builds them with ``loader_options``) or ``LoaderOptions``' fields as keywords, not
    both. The shard set is checked against its manifest here; a mismatch raises ``ShardError``.
    """
    if options is None:
        options = LoaderOptions(**fields)
    elif fields:
        raise TypeError(f"build_loader takes options or their fields as keywords, not both (got {sorted(fields)})")
    if options.backend == "dali":
        from p2p_dist.data.loaders.dali import DaliLoader  # DALI is optional on machines using the fallback

        return DaliLoader(Path(shards_dir), split, options)
    from p2p_dist.data.loaders.webdataset import WebDatasetLoader

    return WebDatasetLoader(Path(shards_dir), split, options)
