"""The segmenter behind the FCN-score: a compact U-Net trained on REAL photos of the train split.

No public package ships Cityscapes segmentation weights, so the project trains its own (a few minutes on
a CPU for the demo set) and caches it next to the shards, one per crop size (a segmenter scores best at the
resolution it was trained at, so runs at 128 and 256 pixels each get their own):

    <shards>/segmenter/segmenter_<crop>.pt     checkpoint: {"format", "config", "state_dict"}
    <shards>/segmenter/segmenter_<crop>.json   sidecar: train settings, sha256 of the shards' manifest.json (a
                                               stale cache is detected when the shards change), and the
                                               FCN-score of REAL val photos, the ceiling any generator's score
                                               is read against

Training runs, launch/evaluate.py and sweeps all get their segmenter from :func:`ensure_run_segmenter` /
:func:`segmenter_for`: the config's ``eval.segmenter`` if set, else the cached one for ``data.shards`` at
``data.crop_size``.

``load_segmenter`` also accepts a user-supplied segmenter:

- a TorchScript file whose forward takes photos (B,3,H,W) in [-1, 1] (RGB) and returns (B,19,h,w) logits
  over the Cityscapes train ids (any h, w: logits are resized to the label resolution before the argmax);
- a bare ``state_dict`` of :class:`SegmenterNet` (its width is read from the weights).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
import zipfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from p2p_dist.atomic_write import write_atomically
from p2p_dist.config import ConfigError
from p2p_dist.data.labels import IGNORE_INDEX, NUM_TRAIN_CLASSES, to_train_ids
from p2p_dist.data.loader import build_loader
from p2p_dist.data.shards import MANIFEST_NAME
from p2p_dist.errors import BadFileError
from p2p_dist.eval.metrics import build_confusion_matrix, fcn_scores, predict_train_ids
from p2p_dist.inference import default_device, sidecar_path
from p2p_dist.safe_load import load_tensors

if TYPE_CHECKING:
    from p2p_dist.config import Config
    from p2p_dist.train.runtime import Runtime

CHECKPOINT_FORMAT = "p2p_dist.segmenter/1"
CACHE_SUBDIR = "segmenter"
# How long the other ranks wait for rank 0 to train the segmenter: hours on a CPU for a full data set, far
# past the default 30-minute collective timeout. A week means "never time out"; a rank 0 that dies still
# ends the wait at once (its gloo connections close, and the launcher stops the job).
TRAINING_WAIT = timedelta(days=7)


# ----------------------------------------------------------------------------------------------- model


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _double_conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(_conv_bn_relu(in_channels, out_channels, stride), _conv_bn_relu(out_channels, out_channels))


class SegmenterNet(nn.Module):
    """Compact U-Net: photos (B,3,H,W) in [-1, 1] -> (B, num_classes, H, W) logits.

    The stem has stride 2 and the logits are upsampled bilinearly at the end: full-resolution feature maps
    cost most of a U-Net's compute and add little for per-pixel classes that come in large regions.
    Four more stride-2 stages (widths w, 2w, 4w, 8w, 8w) give a receptive field covering a 256 crop.
    Width 16: 1.2M parameters, 1.6 GFLOP per 256x256 image forward. H and W must be multiples of 32.
    """

    def __init__(self, num_classes: int = NUM_TRAIN_CLASSES, width: int = 16) -> None:
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width, 8 * width]
        self.stem = _double_conv(3, widths[0], stride=2)
        self.down = nn.ModuleList(
            _double_conv(widths[i], widths[i + 1], stride=2) for i in range(len(widths) - 1)
        )
        self.up = nn.ModuleList(
            _double_conv(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(len(widths) - 1))
        )
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        self.num_classes = num_classes
        self.width = width

    def forward(self, photos: Tensor) -> Tensor:
        height, width = photos.shape[-2:]
        if height % 32 or width % 32:
            raise ValueError(f"SegmenterNet needs H and W divisible by 32, got {height}x{width}")
        x = self.stem(photos)
        skips = []
        for stage in self.down:
            skips.append(x)
            x = stage(x)
        for stage, skip in zip(self.up, reversed(skips)):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = stage(torch.cat([x, skip], dim=1))
        return F.interpolate(self.head(x), size=(height, width), mode="bilinear", align_corners=False)


def segmentation_loss(logits: Tensor, train_ids: Tensor) -> Tensor:
    """Per-pixel cross-entropy over the train ids; ``IGNORE_INDEX`` pixels do not count.

    A batch with no labelled pixel gives a zero loss (cross-entropy would return NaN and poison Adam).
    """
    train_ids = train_ids.long()
    if not (train_ids != IGNORE_INDEX).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), train_ids, ignore_index=IGNORE_INDEX)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, photos: Tensor, train_ids: Tensor) -> float:
    """One optimiser step on a batch; returns the loss."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = segmentation_loss(model(photos), train_ids)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


@torch.no_grad()
def score_segmenter(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], device: torch.device) -> dict:
    """FCN-score of a segmenter over (photos in [-1, 1], Cityscapes label ids) batches, in this process alone."""
    # No sync: in a distributed run rank 0 trains and scores the segmenter while the other ranks wait, and
    # would never join the all-gather of a synced compute().
    confusion = build_confusion_matrix(device, sync=False)
    num_images = 0
    for photos, ids in batches:
        train_ids = to_train_ids(ids.to(device)).long()
        confusion.update(predict_train_ids(model, photos.to(device), tuple(train_ids.shape[-2:])), train_ids)
        num_images += photos.shape[0]
    return {**fcn_scores(confusion.compute()), "num_images": num_images}


# ------------------------------------------------------------------------------------ files and caching


@dataclass(frozen=True)
class SegmenterTrainConfig:
    """Settings that determine the trained segmenter (recorded in the sidecar; a change invalidates the cache)."""

    epochs: int = 20
    batch_size: int = 8
    crop_size: int = 256
    lr: float = 3e-3
    width: int = 16
    backend: str = "dali"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "crop_size", "width"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"segmenter setting {name} must be positive, got {getattr(self, name)}")
        if self.crop_size % 32:
            raise ConfigError(f"segmenter setting crop_size must be a multiple of 32, got {self.crop_size}")
        if not self.lr > 0:
            raise ConfigError(f"segmenter setting lr must be positive, got {self.lr}")


def default_checkpoint_path(shards_dir: str | os.PathLike, crop_size: int) -> Path:
    """The cache entry for segmenters trained on these shards at ``crop_size``."""
    return Path(shards_dir) / CACHE_SUBDIR / f"segmenter_{crop_size}.pt"


def manifest_sha256(shards_dir: str | os.PathLike) -> str:
    """sha256 of the shard set's manifest.json, which itself lists every shard's checksum."""
    path = Path(shards_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST_NAME} in shard directory {shards_dir}: is it a packed shard set?")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_segmenter(model: SegmenterNet, path: Path, sidecar: dict) -> None:
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "config": {"num_classes": model.num_classes, "width": model.width},
        "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
    }
    # The sidecar marks a complete cache entry: drop the old one first, write the new one last.
    sidecar_path(path).unlink(missing_ok=True)
    write_atomically(path, lambda f: torch.save(checkpoint, f))
    write_atomically(sidecar_path(path), json.dumps(sidecar, indent=2).encode())


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or name == "constants.pkl" for name in archive.namelist())


def load_segmenter(path: str | os.PathLike, device: torch.device | str = "cpu") -> nn.Module:
    """Load a segmenter in eval mode: a checkpoint of ours, a bare SegmenterNet state_dict, or TorchScript.

    TorchScript contract: forward(photos (B,3,H,W) float in [-1, 1], RGB) -> (B,19,h,w) logits over the
    Cityscapes train ids. A TorchScript file is a program: load only ones you trust. A checkpoint or state_dict
    is read as tensors and plain values only (p2p_dist.safe_load).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"segmenter file not found: {path}")
    if _is_torchscript(path):
        return torch.jit.load(str(path), map_location=device).eval()
    checkpoint = load_tensors(path)
    if not isinstance(checkpoint, dict):
        raise BadFileError(f"{path}: expected a segmenter checkpoint or state_dict, got {type(checkpoint).__name__}")
    if "format" in checkpoint:
        if checkpoint["format"] != CHECKPOINT_FORMAT:
            raise BadFileError(f"{path}: unknown segmenter format {checkpoint['format']!r} "
                               f"(want {CHECKPOINT_FORMAT!r})")
        model = SegmenterNet(**checkpoint["config"])
        state_dict = checkpoint["state_dict"]
    else:
        stem_weight = checkpoint.get("stem.0.0.weight")
        head_weight = checkpoint.get("head.weight")
        if stem_weight is None or head_weight is None:
            raise BadFileError(f"{path}: not a SegmenterNet state_dict (no stem.0.0.weight / head.weight keys)")
        model = SegmenterNet(num_classes=head_weight.shape[0], width=stem_weight.shape[0])
        state_dict = checkpoint
    if model.num_classes != NUM_TRAIN_CLASSES:
        raise BadFileError(
            f"{path}: segmenter predicts {model.num_classes} classes, the FCN-score needs {NUM_TRAIN_CLASSES}"
        )
    model.load_state_dict(state_dict)
    return model.to(device).eval()


def read_sidecar(checkpoint_path: str | os.PathLike) -> dict | None:
    path = sidecar_path(checkpoint_path)
    if not path.is_file() or not Path(checkpoint_path).is_file():
        return None
    return json.loads(path.read_text())


def cache_is_valid(shards_dir: str | os.PathLike, checkpoint_path: Path, config: SegmenterTrainConfig) -> bool:
    """True when a cached segmenter was trained on these very shards with these settings."""
    sidecar = read_sidecar(checkpoint_path)
    return (
        sidecar is not None
        and sidecar.get("manifest_sha256") == manifest_sha256(shards_dir)
        and sidecar.get("train_config") == asdict(config)
    )


# ------------------------------------------------------------------------------------------ training


def _build_loader(shards_dir: Path, split: str, config: SegmenterTrainConfig, device: torch.device, train: bool):

    # Same 286/256 resize-then-crop augmentation as pix2pix itself; validation is resized, not cropped.
    load_size = round(config.crop_size * 286 / 256) if train else config.crop_size
    return build_loader(
        shards_dir,
        split,
        backend=config.backend,
        batch_size=config.batch_size,
        seed=config.seed,
        train=train,
        load_size=load_size,
        crop_size=config.crop_size,
        flip=train,
        device=device,
    )


def _photo_and_ids(loader, epoch: int) -> Iterable[tuple[Tensor, Tensor]]:
    for batch in loader.epoch(epoch):
        yield batch["photo"], batch["ids"]


def _each_sample_once(loader) -> Iterable[tuple[Tensor, Tensor]]:
    """Epoch 0 without the repeats the loader adds to fill the last batch (marked ``is_repeat``)."""
    for batch in loader.epoch(0):
        fresh = ~batch["is_repeat"]
        if fresh.any():
            yield batch["photo"][fresh], batch["ids"][fresh]


def _fit(model: SegmenterNet, loader, config: SegmenterTrainConfig, device: torch.device, progress: bool) -> float:
    """Adam with a cosine decay of the learning rate to zero over all steps; returns the last loss."""
    if loader.batches_per_epoch == 0:
        raise ValueError(f"the train split yields no batch of {config.batch_size} images")
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    total_steps = config.epochs * loader.batches_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    )
    loss = math.nan
    with tqdm(total=total_steps, desc="segmenter", unit="batch", disable=not progress, file=sys.stderr) as bar:
        for epoch in range(config.epochs):
            for photos, ids in _photo_and_ids(loader, epoch):
                photos = photos.to(device).contiguous(memory_format=torch.channels_last)
                loss = train_step(model, optimizer, photos, to_train_ids(ids.to(device)))
                scheduler.step()
                bar.update()
                bar.set_postfix(epoch=epoch, loss=f"{loss:.3f}")
    return loss


def train_segmenter(
    shards_dir: str | os.PathLike,
    *,
    out_path: str | os.PathLike | None = None,
    epochs: int = SegmenterTrainConfig.epochs,
    batch_size: int = SegmenterTrainConfig.batch_size,
    crop_size: int = SegmenterTrainConfig.crop_size,
    lr: float = SegmenterTrainConfig.lr,
    width: int = SegmenterTrainConfig.width,
    backend: str = SegmenterTrainConfig.backend,
    device: torch.device | str | None = None,
    seed: int = SegmenterTrainConfig.seed,
    progress: bool = True,
) -> Path:
    """Train the FCN-score segmenter on the REAL train photos, score it on REAL val photos, cache it.

    Adam with a cosine learning-rate decay to zero, cross-entropy over the train ids (255 ignored),
    pix2pix's augmentation (resize to 286/256 of the crop, random crop, flip). Returns the checkpoint path
    (default ``<shards>/segmenter/segmenter_<crop_size>.pt``); the sidecar JSON beside it holds the settings,
    the manifest's sha256 and ``val_scores``, the FCN-score ceiling.
    """
    config = SegmenterTrainConfig(epochs, batch_size, crop_size, lr, width, backend, seed)
    shards_dir = Path(shards_dir)
    out_path = Path(out_path) if out_path is not None else default_checkpoint_path(shards_dir, crop_size)
    device = torch.device(device) if device is not None else default_device()
    digest = manifest_sha256(shards_dir)
    torch.manual_seed(seed)

    # channels_last: oneDNN (CPU) and cuDNN convolutions run ~1.4x faster on it (measured here on CPU).
    model = SegmenterNet(width=width).to(device, memory_format=torch.channels_last)
    started = time.perf_counter()
    train_loader = _build_loader(shards_dir, "train", config, device, train=True)
    try:
        final_loss = _fit(model, train_loader, config, device, progress)
    finally:
        train_loader.close()
    train_seconds = time.perf_counter() - started

    model.eval()
    val_loader = _build_loader(shards_dir, "val", config, device, train=False)
    try:
        val_scores = score_segmenter(model, _each_sample_once(val_loader), device)
    finally:
        val_loader.close()
    sidecar = {
        "format": CHECKPOINT_FORMAT,
        "train_config": asdict(config),
        "manifest_sha256": digest,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(train_seconds, 1),
        "final_train_loss": final_loss,
        "val_scores": val_scores,
    }
    save_segmenter(model, out_path, sidecar)
    if progress:
        print(
            f"segmenter: {out_path} ({train_seconds:.0f} s) | FCN-score ceiling on {val_scores['num_images']} real "
            f"val photos: pixel acc {val_scores['fcn/pixel_acc']:.3f}, class acc {val_scores['fcn/class_acc']:.3f}, "
            f"mean IoU {val_scores['fcn/mean_iou']:.3f}",
            file=sys.stderr,
        )
    return out_path


def ensure_segmenter(
    shards_dir: str | os.PathLike, *, out_path: str | os.PathLike | None = None, **train_kwargs
) -> Path:
    """The cached segmenter's path, training it first if the cache is missing or stale.

    Stale: the shards' manifest.json changed, or the requested train settings (``train_kwargs``, same names
    as :func:`train_segmenter`; ``device`` and ``progress`` do not count) differ from the cached ones.
    """
    setting_names = set(SegmenterTrainConfig.__dataclass_fields__)
    unknown = set(train_kwargs) - setting_names - {"device", "progress"}
    if unknown:
        raise TypeError(f"ensure_segmenter got unknown settings: {sorted(unknown)}")
    config = SegmenterTrainConfig(**{k: v for k, v in train_kwargs.items() if k in setting_names})
    out_path = Path(out_path) if out_path is not None else default_checkpoint_path(shards_dir, config.crop_size)
    if cache_is_valid(shards_dir, out_path, config):
        return out_path
    return train_segmenter(shards_dir, out_path=out_path, **train_kwargs)


# ------------------------------------------------------------------------------- the segmenter of a run


def run_segmenter_path(cfg: Config) -> Path:
    """The segmenter file a run's FCN-score uses: ``eval.segmenter`` if set, else the cache entry for
    ``data.shards`` at ``data.crop_size``."""
    if cfg.eval.segmenter:
        return Path(cfg.eval.segmenter)
    return default_checkpoint_path(cfg.data.shards, cfg.data.crop_size)


def run_segmenter_ready(cfg: Config) -> bool:
    """True when a run has its segmenter without training one: ``eval.segmenter`` is set, or the cache holds a
    segmenter trained on these very shards at the run's crop size (by launch/train_segmenter.py with any
    settings, or by an earlier run)."""
    if cfg.eval.segmenter:
        return True
    shards_sha256 = manifest_sha256(cfg.data.shards)  # first: no shard set at all is the problem to report
    sidecar = read_sidecar(run_segmenter_path(cfg))
    return sidecar is not None and sidecar.get("manifest_sha256") == shards_sha256


def ensure_run_segmenter(cfg: Config, device: torch.device | str | None = None) -> Path:
    """The path of a run's segmenter, training it first (default settings at the run's crop size, with the
    run's loader) when :func:`run_segmenter_ready` says there is none."""
    path = run_segmenter_path(cfg)
    if not run_segmenter_ready(cfg):
        print(f"training the FCN-score segmenter on {cfg.data.shards} at {cfg.data.crop_size}x{cfg.data.crop_size} "
              f"(once: cached as {path})", file=sys.stderr, flush=True)
        train_segmenter(cfg.data.shards, crop_size=cfg.data.crop_size, backend=cfg.data.loader, device=device)
    return path


def segmenter_for(cfg: Config, rt: Runtime) -> nn.Module:
    """A run's segmenter on ``rt.device``, in eval mode. Collective (call it on every rank): rank 0 trains
    it first when needed while the others wait, then every rank loads it."""
    if not cfg.eval.segmenter:
        # Rank 0 alone decides whether to train (ranks checking the cache themselves could disagree, one
        # seeing it before rank 0 writes it, another after). A barrier on the default group would time out
        # (30 minutes) during a long training: this group exists only for this wait; gloo works beside an
        # NCCL default group and needs no device.
        waiting = dist.new_group(backend="gloo", timeout=TRAINING_WAIT)
        try:
            if rt.is_main:
                ensure_run_segmenter(cfg, rt.device)
            dist.barrier(group=waiting)
        finally:
            dist.destroy_process_group(waiting)
    return load_segmenter(run_segmenter_path(cfg), rt.device)
