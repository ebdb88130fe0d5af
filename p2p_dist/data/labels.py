"""Cityscapes label ids, train ids and colours, taken from the official ``cityscapesscripts`` table.

Label maps on disk (``*_gtFine_labelIds.png``) hold label ids 0..33; training and the FCN-score use the
19 train ids with every other id mapped to ``IGNORE_INDEX``. The colour palette is the one of the
official ``*_gtFine_color.png`` maps (and of the pix2pix paper's figures).
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
from cityscapesscripts.helpers.labels import labels as _CITYSCAPES_LABELS

NUM_IDS: int = 34
NUM_TRAIN_CLASSES: int = 19
IGNORE_INDEX: int = 255

# The 'license plate' entry has id -1: it never appears in labelIds images.
_LABELS = sorted((label for label in _CITYSCAPES_LABELS if label.id >= 0), key=lambda label: label.id)
if [label.id for label in _LABELS] != list(range(NUM_IDS)):
    raise ImportError(f"cityscapesscripts label table has unexpected ids: {[label.id for label in _LABELS]}")


def _train_id(label: Any) -> int:
    return IGNORE_INDEX if label.ignoreInEval or not 0 <= label.trainId < NUM_TRAIN_CLASSES else label.trainId


ID_TO_TRAIN_ID: np.ndarray = np.full(256, IGNORE_INDEX, dtype=np.uint8)
ID_TO_TRAIN_ID[:NUM_IDS] = [_train_id(label) for label in _LABELS]
ID_TO_TRAIN_ID.flags.writeable = False

PALETTE: np.ndarray = np.array([label.color for label in _LABELS], dtype=np.uint8)
PALETTE.flags.writeable = False

_NAME_OF_TRAIN_ID = {_train_id(label): label.name for label in _LABELS if _train_id(label) != IGNORE_INDEX}
TRAIN_CLASS_NAMES: list[str] = [_NAME_OF_TRAIN_ID[train_id] for train_id in range(NUM_TRAIN_CLASSES)]

ArrayOrTensor = TypeVar("ArrayOrTensor")


def label_table() -> dict:
    """The label definitions as plain JSON-able data (recorded in a shard set's manifest.json)."""
    return {
        "source": "cityscapesscripts.helpers.labels",
        "num_ids": NUM_IDS,
        "num_train_classes": NUM_TRAIN_CLASSES,
        "ignore_index": IGNORE_INDEX,
        "train_class_names": list(TRAIN_CLASS_NAMES),
        "labels": [
            {
                "id": label.id,
                "name": label.name,
                "train_id": _train_id(label),
                "category": label.category,
                "color": list(label.color),
                "ignore_in_eval": bool(label.ignoreInEval),
            }
            for label in _LABELS
        ],
    }


def label_id_problem(ids: ArrayOrTensor) -> str | None:
    """None when every value of ``ids`` (a numpy array or a torch tensor) is a Cityscapes label id, else a
    sentence naming the values that are not (for the caller to prefix with the file they came from)."""
    outside = (ids < 0) | (ids >= NUM_IDS)
    if not outside.any():
        return None
    values = sorted(set(ids[outside].tolist()))
    listed = ", ".join(map(str, values[:8])) + (f" and {len(values) - 8} more" if len(values) > 8 else "")
    return (
        f"values {listed} are not Cityscapes label ids 0..{NUM_IDS - 1} (a *_labelIds map holds them; "
        f"trainIds and instanceIds maps hold other numbers)"
    )


def check_label_ids(ids: ArrayOrTensor, source: object) -> None:
    """Raise a ValueError naming ``source`` (a file, or what the values are) and the offending values unless
    every value of ``ids`` is a Cityscapes label id."""
    problem = label_id_problem(ids)
    if problem:
        raise ValueError(f"{source}: {problem}")


def ids_to_color(ids: np.ndarray) -> np.ndarray:
    """HxW label ids -> HxWx3 uint8 colour map (the official ``gtFine_color`` colours)."""
    ids = np.asarray(ids)
    check_label_ids(ids, "ids_to_color")
    return np.take(PALETTE, ids, axis=0)  # several times faster than PALETTE[ids] for an image of ids


def color_to_ids(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 colour map -> HxW uint8 label ids of the nearest palette colour.

    Nearest rather than exact matching because colour maps are often stored as JPEG, whose noise moves
    pixels off the palette. Ids sharing a colour (e.g. 0..4 are all black) resolve to the smallest id.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"color_to_ids expects an HxWx3 image, got shape {rgb.shape}")
    rgb = rgb.astype(np.int32)
    # A few distinct colours occur even in noisy maps: match each distinct colour once.
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    distinct, inverse = np.unique(packed.ravel(), return_inverse=True)
    distinct_rgb = np.stack([(distinct >> 16) & 255, (distinct >> 8) & 255, distinct & 255], axis=1)
    squared_distance = ((distinct_rgb[:, None, :] - PALETTE[None, :, :].astype(np.int32)) ** 2).sum(axis=2)
    nearest = np.argmin(squared_distance, axis=1).astype(np.uint8)  # argmin keeps the first (smallest) id
    return nearest[inverse].reshape(packed.shape)


def to_train_ids(ids: ArrayOrTensor) -> ArrayOrTensor:
    """Label ids -> train ids (uint8, ignored ids and values outside 0..33 -> ``IGNORE_INDEX``).

    Takes a numpy array or a torch tensor and returns the same kind (a tensor stays on its device).
    """
    if isinstance(ids, np.ndarray):
        if ids.dtype == np.uint8:
            return ID_TO_TRAIN_ID[ids]
        out_of_range = (ids < 0) | (ids >= NUM_IDS)
        return ID_TO_TRAIN_ID[np.where(out_of_range, NUM_IDS, ids).astype(np.intp)]
    import torch  # only callers that hold tensors pay for importing torch

    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"to_train_ids expects a numpy array or a torch tensor, got {type(ids).__name__}")
    lut = torch.from_numpy(ID_TO_TRAIN_ID.copy()).to(ids.device)
    if ids.dtype == torch.uint8:
        return lut[ids.long()]
    out_of_range = (ids < 0) | (ids >= NUM_IDS)
    return lut[torch.where(out_of_range, torch.full_like(ids, NUM_IDS), ids).long()]
