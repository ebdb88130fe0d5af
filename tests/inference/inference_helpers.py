"""Run directories and label maps for the inference tests.

`write_run_dir` writes the layout launch/train.py writes (config.yaml, checkpoints/latest, step dirs with
G/engine/mp_rank_00_model_states.pt holding {"module": state_dict}, trainer.json) without DeepSpeed, with a
tiny unet_128 whose batch-norm statistics are calibrated on label maps, so that (unlike a freshly initialised
U-Net) its photos depend clearly on the input, on dropout and on the norm mode.
"""

import importlib.util
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.optim.swa_utils import update_bn

from p2p_dist.config import Config, load_config, save_config
from p2p_dist.data import labels
from p2p_dist.inference.label_maps import encode_labels
from p2p_dist.models import LABEL_CHANNELS, build_generator
from p2p_dist.train.checkpoint import TrainerState

from runs import ROOT, TINY, train_env

TRANSLATE = str(ROOT / "launch" / "translate.py")
# Ids that share a palette colour with a smaller id (1..4 are black like 0; 18 is grey like 17) cannot
# survive a round trip through a colour map: leave them out of maps compared across formats.
COLOUR_UNIQUE_IDS = np.array([i for i in range(labels.NUM_IDS) if i not in (1, 2, 3, 4, 18)], dtype=np.uint8)


def block_ids(height: int, width: int, seed: int, block: int = 16) -> np.ndarray:
    """A (height, width) uint8 label-id map of random `block`-pixel squares (a crude street scene)."""
    rng = np.random.default_rng(seed)
    coarse = rng.choice(COLOUR_UNIQUE_IDS, size=(-(-height // block), -(-width // block)))
    return coarse.repeat(block, 0).repeat(block, 1)[:height, :width]


def save_ids(path: Path, ids: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ids).save(path)
    return path


def save_colour(path: Path, ids: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(labels.ids_to_color(ids)).save(path)
    return path


def read_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _calibrated_generator(cfg: Config, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    encoding, size = cfg.data.label_encoding, cfg.data.crop_size
    generator = build_generator(LABEL_CHANNELS[encoding], 3, image_size=size, ngf=cfg.model.ngf, norm=cfg.model.norm)
    maps = [torch.from_numpy(block_ids(size, size, seed=seed * 100 + i))[None] for i in range(4)]
    update_bn([encode_labels(ids, encoding) for ids in maps], generator)
    return generator


def write_run_dir(
    root: Path, *, label_encoding: str = "color", norm: str = "batch", steps: tuple[int, ...] = (3, 7)
) -> Path:
    """A run directory with one checkpoint per step (different weights each); `latest` names the last."""
    cfg = load_config(
        None,
        [*TINY, f"data.label_encoding={label_encoding}", f"model.norm={norm}", "train.steps=10", f"run.dir={root}"],
    )
    (root / "checkpoints").mkdir(parents=True)
    save_config(cfg, root / "config.yaml")
    for step in steps:
        ckpt = root / "checkpoints" / f"step_{step:06d}"
        (ckpt / "G" / "engine").mkdir(parents=True)
        generator = _calibrated_generator(cfg, seed=step)
        torch.save({"module": generator.state_dict()}, ckpt / "G" / "engine" / "mp_rank_00_model_states.pt")
        (ckpt / "trainer.json").write_text(json.dumps(asdict(TrainerState(step=step))))
    (root / "checkpoints" / "latest").write_text(f"step_{steps[-1]:06d}")
    return root


def run_script(script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, script, *map(str, args)],
        env=train_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{script} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return result


def translate_cli():
    """launch/translate.py as a module, to call its `main(argv)` in this process (no torch start-up cost)."""
    spec = importlib.util.spec_from_file_location("translate_cli", TRANSLATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
