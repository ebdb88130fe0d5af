"""Session-scoped tiny shard sets for the data tests (source trees: markerdata.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from p2p_dist.data.shards.pack import PackSettings, pack_pairs
from p2p_dist.data.sources import scan_cityscapes

from markerdata import STORAGE, TEST_SETTINGS, write_aligned_tree, write_cityscapes_tree


@pytest.fixture(scope="session")
def cityscapes_tree(tmp_path_factory) -> Path:
    return write_cityscapes_tree(tmp_path_factory.mktemp("cityscapes"), {"train": 10, "val": 5})


@pytest.fixture(scope="session")
def marker_shards(tmp_path_factory, cityscapes_tree) -> Path:
    """The marker Cityscapes tree packed at 64x32, 4 samples per shard (train: 3 shards, val: 2)."""
    out = tmp_path_factory.mktemp("shards") / "marker"
    pack_pairs(scan_cityscapes(cityscapes_tree), out, settings=TEST_SETTINGS, workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def marker_shards_raw(tmp_path_factory, cityscapes_tree) -> Path:
    """The same tree with raw (PGM) label maps."""
    out = tmp_path_factory.mktemp("shards") / "marker_raw"
    settings = PackSettings(size=STORAGE, samples_per_shard=4, label_format="raw")
    pack_pairs(scan_cityscapes(cityscapes_tree), out, settings=settings, workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def aligned_tree(tmp_path_factory) -> Path:
    return write_aligned_tree(tmp_path_factory.mktemp("aligned"), {"train": 6, "val": 3})


@pytest.fixture
def shard_copy(tmp_path, marker_shards) -> Path:
    """A private copy of the marker shard set, for tests that damage it."""
    return Path(shutil.copytree(marker_shards, tmp_path / "copy"))
