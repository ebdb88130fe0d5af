"""Reading label maps (ids or colours), encoding them as the loaders do, resizing, listing and naming."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from p2p_dist.data import labels
from p2p_dist.data.loaders.build import build_loader
from p2p_dist.inference.label_maps import TranslateError, encode_labels, list_label_maps, read_label_ids, resize_ids
from p2p_dist.inference.translate import output_name

from inference_helpers import block_ids, save_colour, save_ids


@pytest.mark.parametrize("encoding", ["color", "onehot"])
def test_encode_labels_is_bit_identical_to_the_dali_loader_encoding(tiny_shards, encoding):
    loader = build_loader(
        tiny_shards,
        "val",
        backend="dali",
        batch_size=2,
        train=False,
        load_size=128,
        crop_size=128,
        label_encoding=encoding,
        num_workers=1,
    )
    try:
        batch = next(iter(loader.epoch(0)))
    finally:
        loader.close()
    assert batch["ids"].unique().numel() > 3  # a real scene, not a constant map
    assert torch.equal(encode_labels(batch["ids"], encoding), batch["label"])


def test_encode_labels_gives_palette_colours_in_minus_one_to_one_and_one_hot_channels():
    ids = torch.tensor([[[0, 7], [26, 33]]], dtype=torch.uint8)
    colour = encode_labels(ids, "color")
    assert colour.shape == (1, 3, 2, 2) and colour.dtype == torch.float32
    expected = torch.from_numpy(labels.PALETTE[[7]].astype(np.float32)).flatten() / 127.5 - 1
    assert torch.equal(colour[0, :, 0, 1], expected)  # id 7 (road) is (128, 64, 128)
    onehot = encode_labels(ids, "onehot")
    assert onehot.shape == (1, 34, 2, 2)
    assert torch.equal(onehot.argmax(1), ids.long()) and torch.equal(onehot.sum(1), torch.ones(1, 2, 2))


def test_encode_labels_rejects_ids_outside_0_to_33_and_wrong_shapes():
    with pytest.raises(ValueError, match="34"):
        encode_labels(torch.full((1, 2, 2), 34, dtype=torch.uint8), "color")
    with pytest.raises(ValueError, match=r"\(B, H, W\) uint8"):
        encode_labels(torch.zeros(2, 2, dtype=torch.uint8), "onehot")


def test_id_maps_and_colour_maps_are_detected_and_read_to_the_same_ids(tmp_path):
    ids = block_ids(64, 96, seed=1)
    assert np.array_equal(read_label_ids(save_ids(tmp_path / "a_labelIds.png", ids)), ids)
    assert np.array_equal(read_label_ids(save_colour(tmp_path / "a_color.png", ids)), ids)
    # A greyscale map saved as RGB is colour by default, ids when forced.
    grey_rgb = tmp_path / "grey_rgb.png"
    Image.fromarray(np.repeat(ids[..., None], 3, axis=2)).save(grey_rgb)
    assert np.array_equal(read_label_ids(grey_rgb, "ids"), ids)
    assert not np.array_equal(read_label_ids(grey_rgb), ids)


def test_colour_maps_with_jpeg_noise_map_to_the_nearest_palette_colour(tmp_path):
    ids = block_ids(64, 64, seed=2, block=32)
    path = tmp_path / "noisy.jpg"
    Image.fromarray(labels.ids_to_color(ids)).save(path, quality=90)
    offset = np.arange(64) % 32
    away_from_edges = (offset >= 4) & (offset < 28)  # block interiors, clear of JPEG ringing at the edges
    interior = away_from_edges[:, None] & away_from_edges[None, :]
    assert np.array_equal(read_label_ids(path)[interior], ids[interior])


def test_forcing_ids_on_a_colour_map_and_out_of_range_ids_raise_errors_naming_the_file(tmp_path):
    colour = save_colour(tmp_path / "scene_color.png", block_ids(32, 32, seed=3))
    with pytest.raises(TranslateError, match="scene_color.png.*channels differ"):
        read_label_ids(colour, "ids")
    train_ids = tmp_path / "scene_trainIds.png"
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(train_ids)
    with pytest.raises(TranslateError, match="scene_trainIds.png.*0..33"):
        read_label_ids(train_ids)


def test_resize_ids_uses_nearest_neighbour_with_pixel_centres():
    ids = np.arange(4, dtype=np.uint8).reshape(2, 2)
    assert np.array_equal(resize_ids(ids, (4, 4)), ids.repeat(2, 0).repeat(2, 1))
    big = np.arange(16, dtype=np.uint8).reshape(4, 4)
    assert np.array_equal(resize_ids(big, (2, 2)), big[1::2, 1::2])  # the centre-most source pixels


def test_list_label_maps_takes_a_file_a_folder_of_images_or_a_glob_pattern(tmp_path):
    ids = block_ids(16, 16, seed=4)
    b = save_ids(tmp_path / "maps" / "b.png", ids)
    a = save_ids(tmp_path / "maps" / "a.png", ids)
    (tmp_path / "maps" / "notes.json").write_text("{}")
    save_ids(tmp_path / "maps" / "sub" / "c.png", ids)
    assert list_label_maps(tmp_path / "maps") == [a, b]  # sorted, images only, not recursive
    assert list_label_maps(b) == [b]
    assert [p.name for p in list_label_maps(tmp_path / "maps" / "*" / "*.png")] == ["c.png"]
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        list_label_maps(tmp_path / "nothing_here")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("frankfurt_000000_000294_gtFine_labelIds.png", "frankfurt_000000_000294_fake.png"),
        ("scene_labelIds.png", "scene_fake.png"),
        ("scene_color.jpg", "scene_color_fake.png"),
    ],
)
def test_output_names_strip_the_label_suffix_and_end_in_fake_png(name, expected):
    assert output_name(Path(name)) == expected
