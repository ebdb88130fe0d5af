"""The synthetic demo data set: an official-looking Cityscapes tree of learnable street scenes."""

import hashlib
import json
import re
import resource
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from p2p_dist.data.demo.scenes import DRAWN_IDS, SPLIT_CITIES, demo_scene, render_scene, write_demo_cityscapes
from p2p_dist.data.labels import IGNORE_INDEX, NUM_IDS, TRAIN_CLASS_NAMES, ids_to_color, to_train_ids

SIZE = (128, 64)  # width, height
COUNTS = {"train": 6, "val": 4}
STEM = r"(?P<city>[a-z]+)_(?P<seq>\d{6})_(?P<frame>\d{6})"
FILE_PATTERNS = {
    "photo": re.compile(rf"leftImg8bit/(?P<split>train|val)/(?P<dir>[a-z]+)/{STEM}_leftImg8bit\.png"),
    "labelIds": re.compile(rf"gtFine/(?P<split>train|val)/(?P<dir>[a-z]+)/{STEM}_gtFine_labelIds\.png"),
    "color": re.compile(rf"gtFine/(?P<split>train|val)/(?P<dir>[a-z]+)/{STEM}_gtFine_color\.png"),
    "instanceIds": re.compile(rf"gtFine/(?P<split>train|val)/(?P<dir>[a-z]+)/{STEM}_gtFine_instanceIds\.png"),
    "polygons": re.compile(rf"gtFine/(?P<split>train|val)/(?P<dir>[a-z]+)/{STEM}_gtFine_polygons\.json"),
}


@pytest.fixture(scope="module")
def demo_tree(tmp_path_factory) -> tuple[Path, dict, float]:
    root = tmp_path_factory.mktemp("demo") / "cityscapes"
    start = time.perf_counter()
    counts = write_demo_cityscapes(
        root, num_train=COUNTS["train"], num_val=COUNTS["val"], size=SIZE, seed=0, workers=1, progress=False
    )
    return root, counts, time.perf_counter() - start


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _files(root: Path, kind: str) -> list[tuple[Path, re.Match]]:
    found = []
    for path in sorted(root.rglob("*")):
        match = FILE_PATTERNS[kind].fullmatch(str(path.relative_to(root)))
        if match:
            found.append((path, match))
    return found


def test_returns_the_number_of_scenes_per_split(demo_tree):
    _, counts, _ = demo_tree
    assert counts == COUNTS


def test_same_seed_writes_byte_identical_files_with_any_number_of_workers(demo_tree, tmp_path):
    root, _, _ = demo_tree
    write_demo_cityscapes(
        tmp_path, num_train=COUNTS["train"], num_val=COUNTS["val"], size=SIZE, seed=0, workers=2, progress=False
    )
    assert _hashes(tmp_path) == _hashes(root)


def test_a_different_seed_gives_different_scenes(demo_tree, tmp_path):
    root, _, _ = demo_tree
    write_demo_cityscapes(
        tmp_path, num_train=COUNTS["train"], num_val=COUNTS["val"], size=SIZE, seed=1, workers=1, progress=False
    )
    ours, theirs = _hashes(tmp_path), _hashes(root)
    assert ours.keys() == theirs.keys()
    images = [name for name in ours if name.endswith(".png")]
    assert all(ours[name] != theirs[name] for name in images)


def test_tree_uses_official_cityscapes_paths_and_names(demo_tree):
    root, _, _ = demo_tree
    photos = _files(root, "photo")
    assert len(photos) == sum(COUNTS.values())
    cities: dict[str, set[str]] = {"train": set(), "val": set()}
    for path, match in photos:
        assert match["dir"] == match["city"], path  # the folder is the city the file is named after
        assert int(match["frame"]) == 19
        cities[match["split"]].add(match["city"])
        label = root / "gtFine" / match["split"] / match["city"] / path.name.replace("leftImg8bit", "gtFine_labelIds")
        assert label.is_file(), label
    assert cities["train"] == set(SPLIT_CITIES["train"])
    assert cities["val"] == set(SPLIT_CITIES["val"])
    assert not cities["train"] & cities["val"]
    sequences = sorted(int(match["seq"]) for _, match in photos if match["city"] == SPLIT_CITIES["train"][1])
    assert sequences == [0, 1]  # consecutive numbering within each city


def test_tree_holds_the_distractor_files_of_a_real_release(demo_tree):
    root, _, _ = demo_tree
    assert (root / "README").is_file() and (root / "license.txt").is_file()
    n = sum(COUNTS.values())
    for kind in ("color", "instanceIds", "polygons"):
        assert len(_files(root, kind)) == n, kind
    every_file = [path for path in root.rglob("*") if path.is_file()]
    assert len(every_file) == 5 * n + 2


def test_label_maps_are_8bit_label_ids_the_size_of_their_photo(demo_tree):
    root, _, _ = demo_tree
    for path, _ in _files(root, "labelIds"):
        label = Image.open(path)
        photo = Image.open(str(path).replace("gtFine", "leftImg8bit", 1).replace("_gtFine_labelIds", "_leftImg8bit"))
        assert label.mode == "L" and photo.mode == "RGB"
        assert label.size == photo.size == SIZE
        ids = np.asarray(label)
        assert ids.max() < NUM_IDS
        assert set(np.unique(ids).tolist()) <= set(DRAWN_IDS)


def test_files_hold_exactly_the_rendered_scene(demo_tree):
    root, _, _ = demo_tree
    scene = demo_scene("val", 3, size=SIZE, seed=0)
    city = SPLIT_CITIES["val"][1]
    stem = root / "gtFine" / "val" / city / f"{city}_000001_000019"
    assert np.array_equal(np.asarray(Image.open(f"{stem}_gtFine_labelIds.png")), scene.label_ids)
    assert np.array_equal(np.asarray(Image.open(f"{stem}_gtFine_instanceIds.png")), scene.instance_ids)
    photo = root / "leftImg8bit" / "val" / city / f"{city}_000001_000019_leftImg8bit.png"
    assert np.array_equal(np.asarray(Image.open(photo)), scene.photo)


def test_colour_instance_and_polygon_files_agree_with_the_label_ids(demo_tree):
    root, _, _ = demo_tree
    for path, _ in _files(root, "labelIds"):
        ids = np.asarray(Image.open(path))
        prefix = str(path)[: -len("_labelIds.png")]
        assert np.array_equal(np.asarray(Image.open(f"{prefix}_color.png").convert("RGB")), ids_to_color(ids))
        instances = np.asarray(Image.open(f"{prefix}_instanceIds.png")).astype(np.int64)
        assert np.array_equal(np.where(instances >= 1000, instances // 1000, instances), ids)
        polygons = json.loads(Path(f"{prefix}_polygons.json").read_text())
        assert (polygons["imgWidth"], polygons["imgHeight"]) == SIZE
        drawn = {polygon["label"] for polygon in polygons["objects"]}
        assert {"sky", "road"} <= drawn


def test_scenes_have_street_perspective():
    for index in range(10):
        ids = demo_scene("train", index, size=SIZE, seed=3).label_ids
        rows = np.arange(SIZE[1])[:, None]
        assert ((ids == 23) * rows).max() < 0.5 * SIZE[1]  # the sky ends at the horizon
        assert ((ids == 7) * rows + (ids != 7) * SIZE[1]).min() > 0.4 * SIZE[1]  # the road starts below it
        assert ids[-1, SIZE[0] // 2] in (1, 2, 3, 7, 26, 27, 28)  # the bottom centre is road or ego car


def test_scenes_draw_every_common_cityscapes_class_and_void_ids():
    drawn = set()
    for index in range(40):
        drawn |= set(np.unique(demo_scene("train", index, size=SIZE, seed=5).label_ids).tolist())
    evaluated = {
        "road",
        "sidewalk",
        "building",
        "wall",
        "fence",
        "pole",
        "traffic light",
        "traffic sign",
        "vegetation",
        "terrain",
        "sky",
        "person",
        "car",
        "truck",
        "bus",
    }
    drawn_names = {TRAIN_CLASS_NAMES[t] for t in to_train_ids(np.array(sorted(drawn))) if t != IGNORE_INDEX}
    assert drawn_names == evaluated
    assert {0, 1, 2, 3, 4} <= drawn  # void ids, ignored in training and evaluation


def _colour_texture_cells(photo: np.ndarray) -> np.ndarray:
    """Each pixel's quantised colour (8 levels per channel) and local contrast (4 levels)."""
    rgb = photo.astype(np.int32)
    luminance = rgb.sum(axis=-1)
    contrast = np.abs(np.diff(luminance, axis=1, append=luminance[:, -1:])) + np.abs(
        np.diff(luminance, axis=0, append=luminance[-1:])
    )
    quantised = rgb // 32
    return ((quantised[..., 0] * 8 + quantised[..., 1]) * 8 + quantised[..., 2]) * 4 + np.minimum(contrast // 24, 3)


def test_photos_carry_the_labels():
    """A per-pixel lookup of colour and local contrast, fitted on some scenes, labels others far above chance.

    Measured with seed 0: accuracy 0.575 against 0.24 for always guessing the most common class (over
    seeds 0-11: 0.45-0.72 against 0.19-0.35). A network that also sees context does much better: a small
    CNN trained for 6 epochs on 240 scenes at 128x64 labelled other scenes with pixel accuracy 0.93.
    """

    def pixels(split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
        scenes = [demo_scene(split, index, size=SIZE, seed=0) for index in range(count)]
        cells = np.concatenate([_colour_texture_cells(scene.photo).ravel() for scene in scenes])
        train_ids = np.concatenate([to_train_ids(scene.label_ids).ravel() for scene in scenes])
        keep = train_ids != IGNORE_INDEX
        return cells[keep], train_ids[keep]

    fit_cells, fit_ids = pixels("train", 8)
    test_cells, test_ids = pixels("val", 4)
    votes = np.zeros((8 * 8 * 8 * 4, 19))
    np.add.at(votes, (fit_cells, fit_ids), 1)
    most_common = np.bincount(fit_ids).argmax()
    lookup = np.where(votes.sum(axis=1) > 0, votes.argmax(axis=1), most_common)
    accuracy = (lookup[test_cells] == test_ids).mean()
    chance = (test_ids == most_common).mean()
    assert accuracy > 0.45
    assert accuracy > chance + 0.2


def test_a_small_tree_is_written_in_seconds(demo_tree):
    _, _, seconds = demo_tree
    assert seconds < 5.0  # 10 scenes at 128x64 on one core; measured about 0.3 s on an idle machine


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the pool's workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.mark.slow
def test_the_default_demo_set_takes_well_under_a_minute_on_two_cores(tmp_path):
    """CPU time, not wall time, so that other work on a shared machine does not decide the outcome.

    Measured: about 34 CPU-seconds for the 400 scenes (so about 17 s on two idle cores).
    """
    before = _cpu_seconds()
    counts = write_demo_cityscapes(tmp_path, workers=2, progress=False)
    cpu_seconds = _cpu_seconds() - before
    assert counts == {"train": 300, "val": 100}
    assert len(list((tmp_path / "leftImg8bit").rglob("*_leftImg8bit.png"))) == 400
    assert cpu_seconds / 2 < 30


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"size": (16, 64)}, "size"),
        ({"num_train": -1}, "num_train"),
        ({"workers": 0}, "workers"),
    ],
)
def test_bad_arguments_are_rejected_by_name(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        write_demo_cityscapes(tmp_path, **{"num_train": 1, "num_val": 1, "size": SIZE, "progress": False, **kwargs})


def test_scenes_smaller_than_the_minimum_are_rejected():
    with pytest.raises(ValueError, match="16x64"):
        render_scene(16, 64, np.random.default_rng(0))
    with pytest.raises(ValueError, match="split"):
        demo_scene("test", 0)
