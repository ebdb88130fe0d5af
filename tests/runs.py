"""Helpers for tests that run the real entry points in subprocesses (real DeepSpeed, real DALI): tiny demo
shards, `launch/train.py` runs and their final weights. The `tiny_shards` fixture is in tests/conftest.py."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import torch

from p2p_dist.data.demo.shard_set import ensure_demo_shards
from p2p_dist.data.shards.pack import PackSettings
from p2p_dist.run_dir import latest_checkpoint
from p2p_dist.runtime import free_port
from p2p_dist.train.checkpoint import load_weights

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "launch" / "train.py")
DEEPSPEED = str(Path(sys.executable).with_name("deepspeed"))


def _has_dali() -> bool:
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:
        return False


# Where DALI is not installed (the lent GPU machine: its wheel is too large to carry there), runs read the shards
# with the webdataset loader; everywhere else with DALI, the default.
LOADER = "dali" if _has_dali() else "webdataset"
# Small enough for seconds per run on 2 cores, deep enough to be the real unet_128 and PatchGAN.
TINY = [
    "data.load_size=128",
    "data.crop_size=128",
    "model.ngf=8",
    "model.ndf=8",
    "train.batch_size=2",
    "precision=fp32",
    "run.log_every=1",
    "run.sample_every=2",
    "data.num_workers=1",
    f"data.loader={LOADER}",
]


def make_tiny_shards(out: Path) -> Path:
    """12 train and 4 val demo scenes stored at 128x64: seconds to build."""
    return ensure_demo_shards(
        out,
        num_train=12,
        num_val=4,
        image_size=(128, 64),
        settings=PackSettings(size=(128, 64)),
        workers=2,
        progress=False,
    )


def train_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def train_command(run_dir: Path, shards: Path, *overrides: str, nprocs: int = 1) -> list[str]:
    args = [f"data.shards={shards}", f"run.dir={run_dir}", *TINY, *overrides]
    if nprocs == 1:
        return [sys.executable, TRAIN, *args]
    # DeepSpeed installed with pip --target (the lent GPU machine) has no launcher script: run its module.
    launcher = [DEEPSPEED] if Path(DEEPSPEED).is_file() else [sys.executable, "-m", "deepspeed.launcher.runner"]
    return [*launcher, "--num_gpus", str(nprocs), "--master_port", str(free_port()), TRAIN, *args]


def run_training(run_dir: Path, shards: Path, *overrides: str, nprocs: int = 1, check: bool = True):
    result = subprocess.run(
        train_command(run_dir, shards, *overrides, nprocs=nprocs),
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"training failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return result


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    return {f"{net}.{k}": v for net in ("G", "D") for k, v in load_weights(ckpt, net).items()}
