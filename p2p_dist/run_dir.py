"""The run directory: what a training run writes where, the `latest` pointer, and finding a checkpoint.

Layout of ``RUN/`` (``run.dir``)::

    config.yaml              the run's full config (rewritten at every start)
    metrics.jsonl            one JSON record per log interval and per periodic evaluation
    tensorboard/             TensorBoard events
    samples/step_NNNNNN.png  sample grids: label map | generated photo | real photo
    checkpoints/step_NNNNNN/ checkpoints (their contents: p2p_dist.train.checkpoint); complete once
                             trainer.json is in them
    checkpoints/.partial-step_NNNNNN/   a checkpoint being written (renamed when every rank is done)
    checkpoints/latest       the name of the newest complete checkpoint, replaced atomically
    summary.json             written when training ends
    eval/                    launch/evaluate.py's reports: <checkpoint>.json, .md and _samples.png

Everything that reads or writes these paths asks this module for them; it imports nothing from train,
eval, inference or tune.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from p2p_dist.atomic_write import write_atomically
from p2p_dist.config import Config, load_config

CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
SAMPLES_DIR = "samples"
CHECKPOINTS_DIR = "checkpoints"
SUMMARY_NAME = "summary.json"
EVAL_DIR = "eval"
LATEST_NAME = "latest"
# Written last into a checkpoint: a checkpoint directory without it is not complete.
TRAINER_STATE_NAME = "trainer.json"
CHECKPOINT_PREFIX = "step_"
PARTIAL_PREFIX = ".partial-"


@dataclass(frozen=True)
class RunDir:
    """The paths of one run directory (nothing is created by asking for them)."""

    path: Path

    def __init__(self, path: str | os.PathLike) -> None:
        object.__setattr__(self, "path", Path(path))

    @property
    def config(self) -> Path:
        return self.path / CONFIG_NAME

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_NAME

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD_DIR

    @property
    def samples(self) -> Path:
        return self.path / SAMPLES_DIR

    def sample_grid(self, step: int) -> Path:
        return self.samples / f"{checkpoint_name(step)}.png"

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY_NAME

    @property
    def eval(self) -> Path:
        return self.path / EVAL_DIR

    def read_config(self) -> Config:
        """The run's config.yaml, or FileNotFoundError saying this is not a run directory."""
        if not self.config.is_file():
            raise FileNotFoundError(
                f"{self.path}: no {CONFIG_NAME}; is this a run directory written by launch/train.py?"
            )
        return load_config(self.config)


# ------------------------------------------------------------------------- checkpoints/ and its pointer


def checkpoint_name(step: int) -> str:
    """``step_000500``: a checkpoint's directory name (and a sample grid's file stem)."""
    return f"{CHECKPOINT_PREFIX}{step:06d}"


def checkpoint_step(path: Path) -> int:
    """The step in a checkpoint directory's name."""
    return int(path.name.removeprefix(CHECKPOINT_PREFIX))


def step_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """The step_NNNNNN directories, oldest first (ordered by number: step_1000000 comes after step_999999)."""
    return sorted((p for p in checkpoints_dir.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir()), key=checkpoint_step)


def partial_checkpoint(checkpoints_dir: Path, name: str) -> Path:
    """Where checkpoint `name` is written before it is complete."""
    return checkpoints_dir / f"{PARTIAL_PREFIX}{name}"


def partial_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """What a kill during a checkpoint write left behind."""
    return sorted(checkpoints_dir.glob(f"{PARTIAL_PREFIX}*"))


def is_complete(checkpoint: Path) -> bool:
    return (checkpoint / TRAINER_STATE_NAME).is_file()


def write_latest(checkpoints_dir: Path, name: str) -> None:
    """Point `latest` at checkpoint `name`, atomically: a reader sees the old name or the new one."""
    write_atomically(checkpoints_dir / LATEST_NAME, name.encode())


def latest_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The checkpoint `latest` names; None before the first one. Raises FileNotFoundError when the pointer
    names a checkpoint that is not complete."""
    pointer = checkpoints_dir / LATEST_NAME
    if not pointer.is_file():
        return None
    path = checkpoints_dir / pointer.read_text().strip()
    if not is_complete(path):
        raise FileNotFoundError(f"{pointer} names {path}, which is not a complete checkpoint")
    return path


def resolve_checkpoint(run_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None) -> Path:
    """A checkpoint of a run, for reading its weights: the latest (None), a name such as ``step_000500``, or a
    checkpoint directory anywhere. A named one needs only the generator's weights (``G/``), which is all that
    evaluation and translation read. Raises FileNotFoundError naming what exists."""
    root = RunDir(run_dir).checkpoints
    if checkpoint is None:
        latest = latest_checkpoint(root)
        if latest is None:
            raise FileNotFoundError(f"{root}: no checkpoint yet (no '{LATEST_NAME}' file); has {run_dir} trained?")
        return latest
    for candidate in (root / str(checkpoint), Path(checkpoint)):
        if (candidate / "G").is_dir():
            return candidate
    available = [p.name for p in step_checkpoints(root)] if root.is_dir() else []
    raise FileNotFoundError(
        f"checkpoint {str(checkpoint)!r} not found under {root} (available: {', '.join(available) or 'none'})"
    )
