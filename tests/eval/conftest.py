from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run these tests' torch ops on one thread: on a CPU shared with other processes, two OpenMP threads
    spin-waiting for each other made small models ~10x slower than one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def inception_cache(tmp_path_factory) -> Path:
    """A private cache dir, so tests neither depend on nor write to ~/.cache (converted once per session)."""
    from p2p_dist.eval.fid import inception_weights_path

    cache = tmp_path_factory.mktemp("inception_cache")
    inception_weights_path(cache)
    return cache
