"""Suite-wide settings: the process defaults (OpenMP, malloc) of the entry points; GPU tests skip themselves
without CUDA; DeepSpeed reuses the op built by `make install`; `one_thread` for tests of small models."""

import os
from pathlib import Path

from p2p_dist.process_defaults import apply_process_defaults

apply_process_defaults()  # the suite runs with the process settings of the entry points it tests in-process

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".venv" / "torch_extensions"))


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    from runs import make_tiny_shards

    return make_tiny_shards(tmp_path_factory.mktemp("shards") / "demo")


@pytest.fixture
def one_thread():
    """One torch thread: small models on a CPU shared with other processes run fastest and most steadily so
    (OpenMP threads spin-waiting for each other made them several times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
