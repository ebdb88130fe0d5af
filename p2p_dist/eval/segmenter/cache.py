"""The segmenter's files: the checkpoint format, its JSON sidecar, the cache entry per shard set and crop size,
loading a segmenter (ours, a bare state_dict or TorchScript), and when a cache entry is stale."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from p2p_dist.atomic_write import write_atomically
from p2p_dist.config import ConfigError
from p2p_dist.data.labels import NUM_TRAIN_CLASSES
from p2p_dist.data.shards.format import MANIFEST_NAME
from p2p_dist.errors import BadFileError
from p2p_dist.eval.segmenter.net import SegmenterNet
from p2p_dist.models import sidecar_path
from p2p_dist.safe_load import load_tensors

CHECKPOINT_FORMAT = "p2p_dist.segmenter/1"
CACHE_SUBDIR = "segmenter"


@dataclass(frozen=True)
class SegmenterTrainConfig:
    """Settings that determine the trained segmenter: recorded in the sidecar, and compared by `cache_is_valid`
    when a segmenter of given settings is asked for."""

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
    Cityscapes train ids.
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
            raise BadFileError(
                f"{path}: unknown segmenter format {checkpoint['format']!r} (want {CHECKPOINT_FORMAT!r})"
            )
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


def is_stale(checkpoint_path: str | os.PathLike, shards_dir: str | os.PathLike, crop_size: int) -> bool:
    """The one definition of a stale cache entry: its checkpoint or sidecar is missing, the shards'
    manifest.json changed since it was trained (the sidecar's sha256 differs), or it was trained at another
    crop size than the one asked for. The other settings that trained it do not make it stale: runs use a
    segmenter trained by launch/train_segmenter.py with any settings."""
    sidecar = read_sidecar(checkpoint_path)
    return (
        sidecar is None
        or sidecar.get("manifest_sha256") != manifest_sha256(shards_dir)
        or sidecar.get("train_config", {}).get("crop_size") != crop_size
    )


def cache_is_valid(shards_dir: str | os.PathLike, checkpoint_path: Path, config: SegmenterTrainConfig) -> bool:
    """True when a cached segmenter is not stale for these shards and was trained with exactly these settings
    (what reusing it for a request of these settings needs)."""
    return not is_stale(checkpoint_path, shards_dir, config.crop_size) and read_sidecar(checkpoint_path).get(
        "train_config"
    ) == asdict(config)
