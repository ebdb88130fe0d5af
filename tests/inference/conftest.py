from pathlib import Path

import pytest

from inference_helpers import write_run_dir
from runs import run_training


@pytest.fixture(autouse=True)
def every_test_on_one_thread(one_thread):
    """Small models throughout: see `one_thread`."""


@pytest.fixture(scope="session")
def color_run(tmp_path_factory) -> Path:
    return write_run_dir(tmp_path_factory.mktemp("color_run"), label_encoding="color")


@pytest.fixture(scope="session")
def onehot_run(tmp_path_factory) -> Path:
    return write_run_dir(tmp_path_factory.mktemp("onehot_run"), label_encoding="onehot")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_shards) -> Path:
    """A run directory written by launch/train.py itself (one step, real DeepSpeed checkpoint)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    run_training(run, tiny_shards, "train.steps=1")
    return run
