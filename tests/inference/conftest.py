from pathlib import Path

import pytest
import torch

from inference_helpers import write_run_dir
from runs import run_training


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread: on a CPU shared with other processes, OpenMP threads spin-waiting for each other
    make small models several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
