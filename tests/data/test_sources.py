import numpy as np
import pytest
from PIL import Image

from p2p_dist.data.sources import BadSourceFile, scan_aligned, scan_cityscapes

from markerdata import MARKER_IDS, marker_pair, write_aligned_tree, write_cityscapes_tree


def test_cityscapes_pairs_are_matched_by_name_and_other_files_ignored(cityscapes_tree):
    scan = scan_cityscapes(cityscapes_tree)
    assert {split: len(samples) for split, samples in scan.samples.items()} == {"train": 10, "val": 5}
    assert scan.problems == {"train": [], "val": []}
    for sample in scan.samples["train"]:
        assert sample.photo_path.name == f"{sample.key}_leftImg8bit.png"
        assert sample.label_path.name == f"{sample.key}_gtFine_labelIds.png"
    keys = [sample.key for sample in scan.samples["train"]]
    assert keys == sorted(keys) and all("." not in key for key in keys)


def test_cityscapes_photo_without_label_and_label_without_photo_are_reported_by_path(tmp_path):
    root = write_cityscapes_tree(tmp_path, {"train": 4})
    lonely_label = next((root / "gtFine" / "train").glob("*/*_gtFine_labelIds.png"))
    lonely_photo = (
        root
        / "leftImg8bit"
        / "train"
        / lonely_label.parent.name
        / (lonely_label.name.replace("_gtFine_labelIds.png", "_leftImg8bit.png"))
    )
    orphan_label = next(
        path for path in (root / "gtFine" / "train").glob("*/*_gtFine_labelIds.png") if path != lonely_label
    )
    lonely_label.unlink()
    (
        root
        / "leftImg8bit"
        / "train"
        / orphan_label.parent.name
        / orphan_label.name.replace("_gtFine_labelIds.png", "_leftImg8bit.png")
    ).unlink()
    scan = scan_cityscapes(root, ("train",))
    assert len(scan.samples["train"]) == 2
    reported = {problem.path: problem.reason for problem in scan.problems["train"]}
    assert set(reported) == {lonely_photo, orphan_label}
    assert "no label map" in reported[lonely_photo] and "no photo" in reported[orphan_label]


def test_cityscapes_sample_loads_photo_and_ids(cityscapes_tree):
    photo, ids = scan_cityscapes(cityscapes_tree).samples["val"][0].load()
    assert photo.shape == (64, 128, 3) and photo.dtype == np.uint8
    assert ids.shape == (64, 128) and set(np.unique(ids)) <= set(MARKER_IDS.tolist())


def test_cityscapes_missing_layout_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        scan_cityscapes(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="leftImg8bit"):
        scan_cityscapes(tmp_path)


def test_label_map_with_values_outside_the_table_names_the_file(tmp_path):
    root = write_cityscapes_tree(tmp_path, {"train": 1})
    label_path = next((root / "gtFine" / "train").glob("*/*_gtFine_labelIds.png"))
    Image.fromarray(np.full((64, 128), 40, dtype=np.uint8)).save(label_path)
    with pytest.raises(BadSourceFile, match="40") as error:
        scan_cityscapes(root, ("train",)).samples["train"][0].load()
    assert error.value.path == label_path


def test_colour_label_map_is_rejected_as_label_ids(tmp_path):
    root = write_cityscapes_tree(tmp_path, {"train": 1})
    label_path = next((root / "gtFine" / "train").glob("*/*_gtFine_labelIds.png"))
    color_path = label_path.with_name(label_path.name.replace("labelIds", "color"))
    label_path.write_bytes(color_path.read_bytes())
    with pytest.raises(BadSourceFile, match="single-channel"):
        scan_cityscapes(root, ("train",)).samples["train"][0].load()


def test_aligned_test_folder_is_the_val_split_in_numeric_order(tmp_path):
    root = write_aligned_tree(tmp_path, {"train": 12, "val": 2})
    scan = scan_aligned(root)
    assert [sample.key for sample in scan.samples["train"]] == [str(i) for i in range(12)]
    assert [sample.path.parent.name for sample in scan.samples["val"]] == ["test", "test"]


def test_aligned_colour_half_maps_back_to_the_label_ids(aligned_tree):
    rng = np.random.default_rng(0)  # write_aligned_tree's first image, regenerated

    expected_photo, expected_ids = marker_pair(rng, size=(64, 64))
    photo, ids = scan_aligned(aligned_tree).samples["train"][0].load()
    assert photo.shape == (64, 64, 3)
    assert np.array_equal(ids, expected_ids)
    assert np.abs(photo.astype(int) - expected_photo).max() < 16  # JPEG quality 100


def test_aligned_with_both_test_and_val_folders_is_ambiguous(tmp_path):
    root = write_aligned_tree(tmp_path, {"train": 1, "val": 1})
    (root / "val").mkdir()
    with pytest.raises(ValueError, match="ambiguous"):
        scan_aligned(root)


def test_aligned_uses_val_folder_when_there_is_no_test_folder(tmp_path):
    root = write_aligned_tree(tmp_path, {"train": 1, "val": 2})
    (root / "test").rename(root / "val")
    assert len(scan_aligned(root).samples["val"]) == 2
