from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def every_test_on_one_thread(one_thread):
    """Small models throughout: see `one_thread`."""


@pytest.fixture(scope="session")
def inception_cache(tmp_path_factory) -> Path:
    """A private cache dir, so tests neither depend on nor write to ~/.cache (converted once per session)."""
    from p2p_dist.eval.fid import inception_weights_path

    cache = tmp_path_factory.mktemp("inception_cache")
    inception_weights_path(cache)
    return cache
