"""The Cityscapes label table: train ids, ignore mapping, colours, and colour <-> id conversion."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from p2p_dist.data import labels
from p2p_dist.data.labels import (
    ID_TO_TRAIN_ID,
    IGNORE_INDEX,
    NUM_IDS,
    NUM_TRAIN_CLASSES,
    PALETTE,
    TRAIN_CLASS_NAMES,
    check_label_ids,
    color_to_ids,
    ids_to_color,
    label_table,
    to_train_ids,
)

# From the official Cityscapes label definition (cityscapesscripts/helpers/labels.py).
KNOWN_TRAIN_IDS = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}
KNOWN_COLORS = {
    7: (128, 64, 128),
    8: (244, 35, 232),
    11: (70, 70, 70),
    21: (107, 142, 35),
    23: (70, 130, 180),
    24: (220, 20, 60),
    26: (0, 0, 142),
    33: (119, 11, 32),
}


def _ids_with_their_own_colour() -> np.ndarray:
    """Ids whose palette colour no smaller id shares (0..4 are all black, 17 and 18 share grey)."""
    return np.array([i for i in range(NUM_IDS) if not (PALETTE[:i] == PALETTE[i]).all(axis=1).any()])


def test_there_are_19_train_classes_in_official_order():
    assert NUM_TRAIN_CLASSES == 19
    assert len(TRAIN_CLASS_NAMES) == 19
    assert TRAIN_CLASS_NAMES[0] == "road" and TRAIN_CLASS_NAMES[13] == "car" and TRAIN_CLASS_NAMES[18] == "bicycle"
    used = sorted(set(ID_TO_TRAIN_ID[:NUM_IDS].tolist()) - {IGNORE_INDEX})
    assert used == list(range(19))


def test_evaluated_ids_map_to_their_train_id_and_all_others_to_ignore():
    for label_id in range(NUM_IDS):
        assert ID_TO_TRAIN_ID[label_id] == KNOWN_TRAIN_IDS.get(label_id, IGNORE_INDEX), label_id
    assert ID_TO_TRAIN_ID.shape == (256,) and ID_TO_TRAIN_ID.dtype == np.uint8


def test_values_beyond_the_label_ids_map_to_ignore():
    all_bytes = np.arange(256, dtype=np.uint8)
    assert (to_train_ids(all_bytes)[NUM_IDS:] == IGNORE_INDEX).all()
    wide = np.array([-1, 7, 34, 255, 256, 1000], dtype=np.int64)
    assert to_train_ids(wide).tolist() == [255, 0, 255, 255, 255, 255]


def test_to_train_ids_returns_a_tensor_for_a_tensor():
    ids = np.random.default_rng(0).integers(0, 40, (8, 16)).astype(np.uint8)
    expected = to_train_ids(ids)
    for dtype in (torch.uint8, torch.int64):
        result = to_train_ids(torch.from_numpy(ids).to(dtype))
        assert isinstance(result, torch.Tensor)
        assert torch.equal(result, torch.from_numpy(expected))
    assert to_train_ids(torch.tensor([-1, 300, 26])).tolist() == [255, 255, 13]


def test_to_train_ids_rejects_other_types():
    with pytest.raises(TypeError, match="list"):
        to_train_ids([7, 8])


def test_palette_holds_the_official_colours():
    assert PALETTE.shape == (NUM_IDS, 3) and PALETTE.dtype == np.uint8
    for label_id, color in KNOWN_COLORS.items():
        assert tuple(PALETTE[label_id]) == color


def test_ids_round_trip_through_colours_for_ids_with_distinct_colours():
    distinct = _ids_with_their_own_colour()
    ids = np.random.default_rng(1).choice(distinct, size=(32, 48)).astype(np.uint8)
    rgb = ids_to_color(ids)
    assert rgb.shape == (32, 48, 3) and rgb.dtype == np.uint8
    assert np.array_equal(color_to_ids(rgb), ids)


def test_shared_colours_resolve_to_the_smallest_id():
    rgb = ids_to_color(np.array([[0, 1, 2, 3, 4, 17, 18]], dtype=np.uint8))
    assert color_to_ids(rgb).tolist() == [[0, 0, 0, 0, 0, 17, 17]]


def test_noisy_colours_map_to_the_nearest_id():
    rng = np.random.default_rng(2)
    # Ids whose colours lie far apart, and noise too small to carry a pixel halfway to another colour.
    chosen: list[int] = []
    for i in _ids_with_their_own_colour():
        if all(np.linalg.norm(PALETTE[i].astype(float) - PALETTE[j]) > 35 for j in chosen):
            chosen.append(int(i))
    max_noise = 8
    assert np.sqrt(3) * max_noise < 35 / 2
    ids = rng.choice(chosen, size=(40, 40)).astype(np.uint8)
    noisy = ids_to_color(ids).astype(int) + rng.integers(-max_noise, max_noise + 1, (40, 40, 3))
    assert np.array_equal(color_to_ids(np.clip(noisy, 0, 255).astype(np.uint8)), ids)
    assert len(chosen) >= 20


def test_jpeg_compressed_colour_maps_decode_to_mostly_the_right_ids():
    ids = np.zeros((64, 128), dtype=np.uint8)
    ids[:24] = 23  # sky
    ids[24:44, :70] = 11  # building
    ids[24:44, 70:] = 21  # vegetation
    ids[44:] = 7  # road
    ids[40:56, 20:50] = 26  # a car
    encoded = io.BytesIO()
    Image.fromarray(ids_to_color(ids)).save(encoded, format="JPEG", quality=90)
    decoded = color_to_ids(np.asarray(Image.open(encoded)))
    assert (decoded == ids).mean() > 0.95


def test_ids_to_color_rejects_ids_beyond_the_table():
    with pytest.raises(ValueError, match="34"):
        ids_to_color(np.array([[7, 34]], dtype=np.uint8))


@pytest.mark.parametrize("make", [np.array, torch.tensor], ids=["numpy", "torch"])
def test_label_id_check_names_the_source_and_each_bad_value_once(make):
    check_label_ids(make([[0, 7], [33, 26]]), "fine.png")
    with pytest.raises(
        ValueError,
        match=r"^city_trainIds\.png: values -1, 34, 255 are not Cityscapes label ids "
        r"0\.\.33",
    ):
        check_label_ids(make([[255, 7, 34], [255, -1, 33]]), "city_trainIds.png")


def test_label_id_check_lists_the_first_bad_values_and_counts_the_rest():
    with pytest.raises(ValueError, match=r"values 34, 35, 36, 37, 38, 39, 40, 41 and 2 more are not"):
        check_label_ids(np.arange(30, 44, dtype=np.uint8), "many.png")


def test_color_to_ids_rejects_images_that_are_not_rgb():
    with pytest.raises(ValueError, match=r"\(4, 4\)"):
        color_to_ids(np.zeros((4, 4), dtype=np.uint8))


def test_label_table_is_json_and_agrees_with_the_lookup_tables():
    table = json.loads(json.dumps(label_table()))
    assert table["num_ids"] == NUM_IDS and table["ignore_index"] == IGNORE_INDEX
    assert table["train_class_names"] == TRAIN_CLASS_NAMES
    assert [entry["id"] for entry in table["labels"]] == list(range(NUM_IDS))
    for entry in table["labels"]:
        assert entry["train_id"] == ID_TO_TRAIN_ID[entry["id"]]
        assert entry["color"] == PALETTE[entry["id"]].tolist()
        assert entry["ignore_in_eval"] == (entry["train_id"] == IGNORE_INDEX)
    assert table["labels"][26]["name"] == "car"


def test_lookup_tables_are_read_only():
    with pytest.raises(ValueError):
        labels.ID_TO_TRAIN_ID[7] = 3
    with pytest.raises(ValueError):
        labels.PALETTE[7] = 0
