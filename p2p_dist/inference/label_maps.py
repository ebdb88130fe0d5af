"""Label-map files: finding them, reading them as Cityscapes label ids, resizing ids, and encoding ids for the
generator.

Inputs are Cityscapes label maps: label-id images (8-bit greyscale, ids 0..33, e.g. ``*_gtFine_labelIds.png``)
or colour maps in the Cityscapes palette (RGB, each pixel mapped to the nearest palette colour). They are
encoded for the generator exactly as the data loaders encode them for training (`encode_labels`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from p2p_dist.data import labels
from p2p_dist.data.loaders.contract import apply_label_encoding, nearest_indices
from p2p_dist.errors import UserError
from p2p_dist.models import LABEL_CHANNELS

INPUT_FORMATS = ("auto", "ids", "color")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"})

Size = tuple[int, int]  # (height, width), as torch shapes


class TranslateError(UserError, ValueError):
    """A label map that cannot be read or translated, or an output that cannot be written; names the file."""


def encode_labels(ids: torch.Tensor, encoding: str) -> torch.Tensor:
    """(B, H, W) uint8 label ids -> float32 (B, C, H, W) generator input, exactly as the training loaders
    produce it: ``"color"`` = the Cityscapes palette colour of each id scaled to [-1, 1] (3 channels),
    ``"onehot"`` = 34 channels in {0, 1}. The result stays on `ids`' device."""
    if encoding not in LABEL_CHANNELS:
        raise ValueError(f"encoding must be one of {', '.join(LABEL_CHANNELS)}, got {encoding!r}")
    if ids.dim() != 3 or ids.dtype != torch.uint8:
        raise ValueError(f"ids must be a (B, H, W) uint8 tensor, got {tuple(ids.shape)} {ids.dtype}")
    labels.check_label_ids(ids, "ids")
    return apply_label_encoding(ids, encoding)


def read_label_ids(path: Path, input_format: str = "auto") -> np.ndarray:
    """A label map file -> (H, W) uint8 Cityscapes label ids.

    ``auto``: single-channel images (greyscale, 16-bit) hold ids; palette ("P") and RGB(A) images are colour
    maps. ``ids`` also accepts RGB images whose three channels are equal (greyscale saved as RGB); for "P"
    images it takes the palette indices. ``color`` maps every pixel to the nearest palette colour.
    """
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"input_format must be one of {', '.join(INPUT_FORMATS)}, got {input_format!r}")
    try:
        with Image.open(path) as img:
            img.load()
            single_band = len(img.getbands()) == 1
            as_ids = input_format == "ids" or (input_format == "auto" and single_band and img.mode != "P")
            array = np.asarray(img if as_ids and single_band else img.convert("RGB"))
    except (OSError, UnidentifiedImageError, SyntaxError) as err:  # PIL raises SyntaxError for some corrupt files
        raise TranslateError(f"{path}: cannot read the image ({err})") from None
    if not as_ids:
        return labels.color_to_ids(array)
    if array.ndim == 3:
        if not ((array[..., 0] == array[..., 1]).all() and (array[..., 0] == array[..., 2]).all()):
            raise TranslateError(
                f"{path}: read as label ids, but it is a colour image whose channels differ; "
                f"use input format 'color' (or 'auto')"
            )
        array = array[..., 0]
    if not np.issubdtype(array.dtype, np.integer) and array.dtype != bool:
        raise TranslateError(f"{path}: label ids must be integers, got pixel type {array.dtype}")
    problem = labels.label_id_problem(array)
    if problem:
        raise TranslateError(f"{path}: {problem}")
    return array.astype(np.uint8)


def resize_ids(ids: np.ndarray, size: Size) -> np.ndarray:
    """Nearest-neighbour resize of (H, W) label ids to `size` = (height, width), with the training loader's
    pixel-centre rule, so a map resized here is encoded as the loader would have encoded it."""
    rows = nearest_indices(ids.shape[0], size[0])
    cols = nearest_indices(ids.shape[1], size[1])
    return ids[rows[:, None], cols[None, :]]


def list_label_maps(path: str | Path) -> list[Path]:
    """The label maps named by `path`: a file, the image files directly inside a folder (sorted; not
    recursive), or a glob pattern such as ``gtFine/val/*/*_labelIds.png``."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise FileNotFoundError(f"{path}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
        return found
    anchor = Path(path.anchor) if path.is_absolute() else Path(".")
    pattern = str(path.relative_to(anchor)) if path.is_absolute() else str(path)
    found = sorted(p for p in anchor.glob(pattern) if p.is_file())
    if not found:
        raise FileNotFoundError(f"{path}: no such file or folder, and no file matches it as a pattern")
    return found
