"""Tiny source trees for the data tests (fixtures that pack them are in conftest.py).

The "marker" data makes misalignment detectable: label maps are grids of blocks of a few label ids, and the
photo paints every block in a colour that encodes its id (corners of the RGB cube, far apart so that JPEG
and resampling cannot move a block's colour to another id's). A loader that crops or flips photo and label
map differently breaks the colour <-> id correspondence inside the blocks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from p2p_dist.data import labels
from p2p_dist.data.shards.pack import PackSettings

# Label ids used by the marker data, each with a distinct Cityscapes palette colour (for aligned sources).
MARKER_IDS = np.array([7, 8, 11, 17, 21, 23, 24, 26], dtype=np.uint8)
# Photo colour of MARKER_IDS[k]: RGB cube corner k.
MARKER_COLORS = np.array([[(k >> 2 & 1) * 255, (k >> 1 & 1) * 255, (k & 1) * 255] for k in range(8)], dtype=np.uint8)
SOURCE_SIZE = (128, 64)  # width, height of the source images
STORAGE = (64, 32)
BLOCK = 16  # block side in source pixels (8 in storage pixels)
TEST_SETTINGS = PackSettings(size=STORAGE, samples_per_shard=4)


def marker_pair(rng: np.random.Generator, size: tuple[int, int] = SOURCE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(photo HxWx3, ids HxW) with random blocks of MARKER_IDS and photo colours encoding them."""
    width, height = size
    codes = rng.integers(0, len(MARKER_IDS), (height // BLOCK, width // BLOCK))
    codes = codes.repeat(BLOCK, axis=0).repeat(BLOCK, axis=1)
    return MARKER_COLORS[codes], MARKER_IDS[codes]


def photo_ids(photo_chw: np.ndarray) -> np.ndarray:
    """Invert the marker colours: (3, H, W) photo in [-1, 1] -> HxW label ids of the nearest marker colour."""
    rgb = (photo_chw.transpose(1, 2, 0) + 1.0) * 127.5
    distance = ((rgb[:, :, None, :] - MARKER_COLORS[None, None].astype(np.float32)) ** 2).sum(axis=-1)
    return MARKER_IDS[distance.argmin(axis=-1)]


def interior(ids: np.ndarray) -> np.ndarray:
    """Pixels whose 3x3 neighbourhood has one label id (away from block edges, where resampling blends)."""
    padded = np.pad(ids, 1, mode="edge")
    same = np.ones(ids.shape, dtype=bool)
    for dy in range(3):
        for dx in range(3):
            same &= padded[dy : dy + ids.shape[0], dx : dx + ids.shape[1]] == ids
    return same


def write_cityscapes_tree(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """An official-layout Cityscapes tree of marker pairs, with the distractor files the real one has."""
    rng = np.random.default_rng(seed)
    for split, count in counts.items():
        for index in range(count):
            city = ("aachen", "bremen")[index % 2]
            name = f"{city}_{index:06d}_000019"
            photo_dir, label_dir = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
            photo_dir.mkdir(parents=True, exist_ok=True)
            label_dir.mkdir(parents=True, exist_ok=True)
            photo, ids = marker_pair(rng)
            Image.fromarray(photo).save(photo_dir / f"{name}_leftImg8bit.png")
            Image.fromarray(ids).save(label_dir / f"{name}_gtFine_labelIds.png")
            Image.fromarray(labels.ids_to_color(ids)).save(label_dir / f"{name}_gtFine_color.png")
            Image.fromarray(ids).save(label_dir / f"{name}_gtFine_instanceIds.png")
            (label_dir / f"{name}_gtFine_polygons.json").write_text("{}")
    (root / "README").write_text("distractor")
    (root / "license.txt").write_text("distractor")
    return root


def write_aligned_tree(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """pix2pix aligned folders as prepare_cityscapes_dataset.py writes them (val split in test/)."""
    rng = np.random.default_rng(seed)
    for split, count in counts.items():
        split_dir = root / ("test" if split == "val" else split)
        split_dir.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            photo, ids = marker_pair(rng, size=(64, 64))
            side_by_side = np.concatenate([photo, labels.ids_to_color(ids)], axis=1)
            Image.fromarray(side_by_side).save(split_dir / f"{index}.jpg", quality=100, subsampling=0)
    return root
