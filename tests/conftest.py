"""Suite-wide settings: GPU tests skip themselves without CUDA; DeepSpeed reuses the op built by `make install`."""

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".venv" / "torch_extensions"))


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    from runs import make_tiny_shards

    return make_tiny_shards(tmp_path_factory.mktemp("shards") / "demo")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
