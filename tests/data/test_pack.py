import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from p2p_dist.config import Config
from p2p_dist.data import labels
from p2p_dist.data.demo.shard_set import DEMO_SHARDS, ensure_demo_shards, ensure_demo_shards_if_default
from p2p_dist.data.shards.format import MANIFEST_NAME, decode_label_map, decode_pgm
from p2p_dist.data.shards.pack import PackError, PackSettings, pack_pairs
from p2p_dist.data.shards.read import ShardSet, read_manifest
from p2p_dist.data.shards.verify import verify_shards
from p2p_dist.data.sources import scan_aligned, scan_cityscapes

from markerdata import MARKER_IDS, STORAGE, TEST_SETTINGS, write_cityscapes_tree


def staging(out: Path) -> Path:
    """Where a set for ``out`` is packed until it is complete."""
    return out.with_name(f".{out.name}.partial")


def leftovers(out: Path) -> list[Path]:
    """Anything a pack into ``out`` may leave behind when it stops: its staging directory, partial files."""
    found = [staging(out)] if staging(out).exists() else []
    if out.exists():
        found += [path for path in out.rglob("*") if path.name.endswith((".partial", ".tmp"))]
    return sorted(found)


def test_pack_writes_shards_indexes_and_a_manifest_describing_them(marker_shards):
    manifest = read_manifest(marker_shards)
    assert manifest["source"]["kind"] == "cityscapes"
    assert manifest["storage"]["size"] == "64x32"
    assert manifest["encoder"]["photo"]["quality"] == 95
    assert manifest["encoder"]["label"]["format"] == "png"
    assert manifest["label_table"] == labels.label_table()
    splits = manifest["splits"]
    assert [shard["num_samples"] for shard in splits["train"]["shards"]] == [4, 4, 2]
    assert [shard["num_samples"] for shard in splits["val"]["shards"]] == [4, 1]
    assert splits["train"]["num_skipped"] == 0 and splits["train"]["image_sizes"] == [[64, 32]]
    for shard in splits["train"]["shards"] + splits["val"]["shards"]:
        tar = marker_shards / shard["tar"]
        assert tar.name.startswith("shard-") and tar.suffix == ".tar"
        assert (marker_shards / shard["index"]) == tar.with_suffix(".idx")
        assert hashlib.sha256(tar.read_bytes()).hexdigest() == shard["sha256"]
        assert tar.stat().st_size == shard["size_bytes"]
    assert leftovers(marker_shards) == []


def test_tar_members_are_key_dot_extension_with_fixed_headers(marker_shards):
    with tarfile.open(marker_shards / "train" / "shard-000000.tar") as tar:
        members = tar.getmembers()
        names = [member.name for member in members]
        key = names[0].split(".")[0]
        assert names[:3] == [f"{key}.jpg", f"{key}.json", f"{key}.label.png"]
        assert {(member.mtime, member.uid, member.gid) for member in members} == {(0, 0, 0)}
        meta = json.loads(tar.extractfile(f"{key}.json").read())
        photo = Image.open(io.BytesIO(tar.extractfile(f"{key}.jpg").read()))
        label = Image.open(io.BytesIO(tar.extractfile(f"{key}.label.png").read()))
    assert meta["key"] == key and meta["size"] == [64, 32] and meta["source_size"] == [128, 64]
    assert meta["source"][0].endswith(f"{key}_leftImg8bit.png")
    assert (photo.format, photo.mode, photo.size) == ("JPEG", "RGB", STORAGE)
    assert (label.format, label.mode, label.size) == ("PNG", "L", STORAGE)


def test_label_maps_are_stored_lossless_and_resized_nearest(marker_shards, cityscapes_tree):
    shards = ShardSet(marker_shards, "val")
    scan = scan_cityscapes(cityscapes_tree, ("val",))
    for index, sample in enumerate(scan.samples["val"]):
        _, source_ids = sample.load()
        expected = np.asarray(Image.fromarray(source_ids).resize(STORAGE, Image.Resampling.NEAREST))
        stored = shards.read(index)
        assert stored.key == sample.key
        assert np.array_equal(decode_label_map(stored.members["label.png"], "png"), expected)


def test_raw_label_format_stores_the_same_ids_uncompressed(marker_shards, marker_shards_raw):
    png, raw = ShardSet(marker_shards, "train"), ShardSet(marker_shards_raw, "train")
    assert read_manifest(marker_shards_raw)["encoder"]["label"]["format"] == "raw"
    for index in range(png.num_samples):
        ids = decode_pgm(raw.read(index).members["label.pgm"])
        assert ids.shape == (32, 64) and len(raw.read(index).members["label.pgm"]) < 64 * 32 + 16
        assert np.array_equal(ids, decode_label_map(png.read(index).members["label.png"], "png"))


def test_same_inputs_and_settings_give_byte_identical_shards(tmp_path, cityscapes_tree, marker_shards):
    again = tmp_path / "again"
    pack_pairs(scan_cityscapes(cityscapes_tree), again, settings=TEST_SETTINGS, workers=2, progress=False)
    files = sorted(path.relative_to(marker_shards) for path in marker_shards.rglob("*") if path.is_file())
    assert files == sorted(path.relative_to(again) for path in again.rglob("*") if path.is_file())
    for name in files:
        assert (marker_shards / name).read_bytes() == (again / name).read_bytes(), name


def corrupt_one_photo(root: Path) -> Path:
    photo = sorted((root / "leftImg8bit" / "train").glob("*/*_leftImg8bit.png"))[1]
    photo.write_bytes(photo.read_bytes()[:200])  # truncated PNG
    return photo


def test_corrupt_source_image_is_named_skipped_and_counted(tmp_path, capsys):
    root = write_cityscapes_tree(tmp_path / "src", {"train": 5, "val": 1})
    bad = corrupt_one_photo(root)
    manifest = pack_pairs(scan_cityscapes(root), tmp_path / "out", settings=TEST_SETTINGS, workers=1, progress=False)
    train = manifest["splits"]["train"]
    assert train["num_samples"] == 4 and train["num_skipped"] == 1
    assert train["skipped"][0]["path"] == str(bad) and "cannot decode" in train["skipped"][0]["reason"]
    assert str(bad) in capsys.readouterr().err
    assert bad.name.replace("_leftImg8bit.png", "") not in ShardSet(tmp_path / "out", "train").keys


def test_strict_stops_at_a_corrupt_source_and_leaves_no_manifest_or_partial_shard(tmp_path):
    root = write_cityscapes_tree(tmp_path / "src", {"train": 5})
    bad = corrupt_one_photo(root)
    out = tmp_path / "out"
    with pytest.raises(PackError, match=str(bad)):
        pack_pairs(
            scan_cityscapes(root, ("train",)), out, settings=TEST_SETTINGS, workers=1, strict=True, progress=False
        )
    assert not out.exists() and leftovers(out) == []


def test_unmatched_photo_is_recorded_as_skipped_and_stops_strict_before_writing(tmp_path):
    root = write_cityscapes_tree(tmp_path / "src", {"train": 3})
    label = sorted((root / "gtFine" / "train").glob("*/*_gtFine_labelIds.png"))[0]
    label.unlink()
    manifest = pack_pairs(
        scan_cityscapes(root, ("train",)), tmp_path / "out", settings=TEST_SETTINGS, workers=1, progress=False
    )
    assert manifest["splits"]["train"]["num_skipped"] == 1
    assert "no label map" in manifest["splits"]["train"]["skipped"][0]["reason"]
    with pytest.raises(PackError, match="no label map"):
        pack_pairs(
            scan_cityscapes(root, ("train",)),
            tmp_path / "strict",
            settings=TEST_SETTINGS,
            workers=1,
            strict=True,
            progress=False,
        )
    assert not (tmp_path / "strict").exists()


def test_interrupted_pack_removes_what_it_wrote_and_writes_no_manifest(tmp_path, cityscapes_tree, monkeypatch):
    from p2p_dist.data.shards import pack

    out = tmp_path / "out"
    original_add, calls = pack._SplitWriter.add, []

    def add_then_interrupt(self, sample):
        calls.append(sample.key)
        if len(calls) == 15:  # the last val sample: after train's three shards and val's first one
            packing = staging(out)
            assert (packing / "train" / "shard-000002.tar").is_file()
            assert (packing / "val" / "shard-000000.tar").is_file() and not out.exists()
            raise KeyboardInterrupt
        original_add(self, sample)

    monkeypatch.setattr(pack._SplitWriter, "add", add_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        pack_pairs(scan_cityscapes(cityscapes_tree), out, settings=TEST_SETTINGS, workers=1, progress=False)
    assert len(calls) == 15
    assert sorted(tmp_path.iterdir()) == []
    monkeypatch.undo()  # the next run needs no --overwrite
    pack_pairs(scan_cityscapes(cityscapes_tree), out, settings=TEST_SETTINGS, workers=1, progress=False)


def test_existing_shard_set_is_replaced_only_with_overwrite(tmp_path, cityscapes_tree):
    out = tmp_path / "out"
    scan = scan_cityscapes(cityscapes_tree)
    pack_pairs(scan, out, settings=TEST_SETTINGS, workers=1, progress=False)
    notes = out / "segmenter" / "notes.txt"  # not part of the set: an overwrite keeps it
    notes.parent.mkdir()
    notes.write_text("kept")
    with pytest.raises(PackError, match="--overwrite"):
        pack_pairs(scan, out, settings=TEST_SETTINGS, workers=1, progress=False)
    bigger_shards = PackSettings(size=STORAGE, samples_per_shard=100)
    pack_pairs(scan, out, settings=bigger_shards, workers=1, progress=False, overwrite=True)
    assert sorted(path.name for path in (out / "train").iterdir()) == ["shard-000000.idx", "shard-000000.tar"]
    assert read_manifest(out)["encoder"]["tar"]["samples_per_shard"] == 100
    assert verify_shards(out, workers=1).ok
    assert notes.read_text() == "kept" and leftovers(out) == []


def test_an_overwrite_that_stops_leaves_the_old_set_intact_and_verifiable(tmp_path):
    root = write_cityscapes_tree(tmp_path / "src", {"train": 5, "val": 2})
    out = tmp_path / "out"
    pack_pairs(scan_cityscapes(root), out, settings=TEST_SETTINGS, workers=1, progress=False)
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    bad = corrupt_one_photo(root)
    with pytest.raises(PackError, match=str(bad)):
        pack_pairs(
            scan_cityscapes(root),
            out,
            settings=PackSettings(size=STORAGE, samples_per_shard=100),
            workers=1,
            strict=True,
            overwrite=True,
            progress=False,
        )
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before
    assert verify_shards(out, full=True, workers=1).ok
    assert leftovers(out) == []


def test_aligned_source_packs_with_ids_recovered_from_colours(tmp_path, aligned_tree):
    manifest = pack_pairs(
        scan_aligned(aligned_tree), tmp_path / "out", settings=TEST_SETTINGS, workers=1, progress=False
    )
    assert manifest["source"]["kind"] == "aligned"
    assert {split: entry["num_samples"] for split, entry in manifest["splits"].items()} == {"train": 6, "val": 3}
    assert manifest["splits"]["val"]["image_sizes"] == [[32, 32]]  # 64x64 halves fitted into the 64x32 box
    stored = ShardSet(tmp_path / "out", "val")
    assert set(stored.keys) == {"0", "1", "2"}
    for index in range(stored.num_samples):
        ids = decode_label_map(stored.read(index).members["label.png"], "png")
        assert set(np.unique(ids)) <= set(MARKER_IDS.tolist())


def test_demo_source_is_generated_packed_and_reused(tmp_path):
    settings = PackSettings(size=STORAGE, samples_per_shard=4)
    out = ensure_demo_shards(
        tmp_path / "demo", num_train=4, num_val=2, image_size=(64, 32), settings=settings, workers=1, progress=False
    )
    manifest = read_manifest(out)
    assert manifest["source"]["kind"] == "demo"
    assert {split: entry["num_samples"] for split, entry in manifest["splits"].items()} == {"train": 4, "val": 2}
    assert verify_shards(out, full=True, workers=1).ok
    written = (out / MANIFEST_NAME).stat().st_mtime_ns
    ensure_demo_shards(out, num_train=4, num_val=2, image_size=(64, 32), settings=settings, workers=1, progress=False)
    assert (out / MANIFEST_NAME).stat().st_mtime_ns == written
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".demo-source-")]


def test_demo_never_overwrites_another_shard_set(shard_copy):
    with pytest.raises(PackError, match="not the demo"):
        ensure_demo_shards(shard_copy, num_train=4, num_val=2, workers=1, progress=False)


def test_the_demo_directory_is_the_default_of_data_shards():
    assert Path(Config().data.shards) == DEMO_SHARDS


def tiny_demo(out: Path) -> Path:
    """A demo set with other settings than the default one: stale where the default set is expected."""
    return ensure_demo_shards(
        out,
        num_train=2,
        num_val=1,
        image_size=(64, 32),
        settings=PackSettings(size=STORAGE, samples_per_shard=4),
        workers=1,
        progress=False,
    )


def test_a_demo_set_outside_the_default_directory_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tiny_demo(tmp_path / "mine")
    written = (out / MANIFEST_NAME).read_bytes()
    for path in (out, "mine", "./mine"):
        ensure_demo_shards_if_default(path)
    assert (out / MANIFEST_NAME).read_bytes() == written
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mine"]


@pytest.mark.slow
def test_a_stale_demo_set_in_the_default_directory_is_rebuilt(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    tiny_demo(DEMO_SHARDS)
    ensure_demo_shards_if_default(f"./{DEMO_SHARDS}")  # spelled as a user may write it in a config
    assert "other settings" in capsys.readouterr().err
    manifest = read_manifest(DEMO_SHARDS)
    assert manifest["source"]["generator"]["num_train"] == 300 and manifest["storage"]["size"] == "512x256"
    assert verify_shards(DEMO_SHARDS, workers=2).ok


@pytest.mark.parametrize(
    "box,source,expected",
    [
        ((512, 256), (2048, 1024), (512, 256)),
        ((512, 256), (256, 256), (256, 256)),
        ((512, 256), (512, 256), (512, 256)),
        (None, (2048, 1024), (2048, 1024)),
    ],
)
def test_storage_size_fits_the_box_keeping_the_aspect_ratio(box, source, expected):
    assert PackSettings(size=box).storage_size(*source) == expected


def test_pack_with_no_samples_is_an_error(tmp_path):
    root = tmp_path / "src"
    (root / "leftImg8bit" / "train").mkdir(parents=True)
    (root / "gtFine" / "train").mkdir(parents=True)
    with pytest.raises(PackError, match="no samples"):
        pack_pairs(scan_cityscapes(root, ("train",)), tmp_path / "out", workers=1, progress=False)
