"""Damaged shard sets: `verify` finds every kind of damage, the loaders refuse to read them, naming the shard."""

from pathlib import Path

import pytest

from p2p_dist.data.loaders.build import build_loader
from p2p_dist.data.shards.format import ShardError, parse_index
from p2p_dist.data.shards.read import ShardSet
from p2p_dist.data.shards.verify import verify_shards

BACKENDS = ["dali", "webdataset"]
SHARD = Path("train") / "shard-000001.tar"


def open_loader(shards: Path, backend: str):
    return build_loader(
        shards,
        "train",
        backend=backend,
        batch_size=2,
        train=False,
        load_size=32,
        crop_size=32,
        num_workers=0 if backend == "webdataset" else 1,
    )


def flip_byte_in_photo(shards: Path, sample_number: int = 1) -> str:
    tar = shards / SHARD
    sample = parse_index(tar.with_suffix(".idx").read_text(), tar)[sample_number]
    offset, size = sample.members["jpg"]
    data = bytearray(tar.read_bytes())
    data[offset + size // 2] ^= 0xFF
    tar.write_bytes(bytes(data))
    return sample.key


def test_verify_passes_an_intact_set_with_full_decoding(marker_shards):
    report = verify_shards(marker_shards, full=True, workers=1)
    assert report.ok, report.problems
    assert (report.shards, report.samples) == (5, 15)


def test_verify_names_the_shard_and_sample_with_a_flipped_byte(shard_copy):
    key = flip_byte_in_photo(shard_copy)
    problems = verify_shards(shard_copy, workers=1).problems
    assert problems and all(problem.startswith(str(shard_copy / SHARD)) for problem in problems)
    assert any("sha256" in problem for problem in problems)
    assert any(key in problem and "CRC32" in problem for problem in problems)


@pytest.mark.parametrize("backend", BACKENDS)
def test_loader_refuses_a_sample_with_a_flipped_byte_naming_the_shard(shard_copy, backend):
    key = flip_byte_in_photo(shard_copy)
    loader = open_loader(shard_copy, backend)  # sizes and indexes still match: the damage shows when read
    with pytest.raises(ShardError, match=f"{shard_copy / SHARD}.*{key}.*CRC32"):
        for _ in loader.epoch(0):
            pass
    loader.close()


def truncate(shards: Path) -> None:
    tar = shards / SHARD
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])


def test_verify_names_a_truncated_shard(shard_copy):
    truncate(shard_copy)
    problems = verify_shards(shard_copy, workers=1).problems
    assert any(str(shard_copy / SHARD) in problem and "bytes" in problem for problem in problems)
    assert any("complete samples" in problem for problem in problems)


@pytest.mark.parametrize("backend", BACKENDS)
def test_loader_refuses_a_truncated_shard_before_reading(shard_copy, backend):
    truncate(shard_copy)
    with pytest.raises(ShardError, match=f"{shard_copy / SHARD}.*truncated"):
        open_loader(shard_copy, backend)


def test_verify_reports_a_shard_overwritten_with_garbage_instead_of_crashing(shard_copy):
    (shard_copy / SHARD).write_bytes(b"\x00" * 4096)
    problems = verify_shards(shard_copy, full=True, workers=1).problems
    assert problems and all(problem.startswith(str(shard_copy / SHARD)) for problem in problems)
    assert any("0 complete samples" in problem for problem in problems)


def make_index_stale(shards: Path) -> None:
    """Replace the index with the one of another shard holding as many samples (same count, wrong offsets)."""
    (shards / SHARD.with_suffix(".idx")).write_bytes((shards / "train" / "shard-000000.idx").read_bytes())


def test_verify_names_a_stale_index(shard_copy):
    make_index_stale(shard_copy)
    problems = verify_shards(shard_copy, workers=1).problems
    assert len(problems) == 1 and problems[0].startswith(str(shard_copy / SHARD)) and "stale" in problems[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_loader_refuses_a_stale_index_naming_the_shard(shard_copy, backend):
    make_index_stale(shard_copy)
    with pytest.raises(ShardError, match=f"{shard_copy / SHARD}.*stale"):
        open_loader(shard_copy, backend)


def test_short_index_is_refused_even_with_a_matching_checksum_in_the_manifest(shard_copy):
    """An index silently missing samples (as wds2idx writes for a truncated tar) never gives a short epoch."""
    import hashlib
    import json

    index = shard_copy / SHARD.with_suffix(".idx")
    lines = index.read_text().splitlines()
    short = "\n".join([f"v1.2 {len(lines) - 2}", *lines[1:-1]]) + "\n"
    index.write_text(short)
    manifest_path = shard_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["splits"]["train"]["shards"][1]["index_sha256"] = hashlib.sha256(short.encode()).hexdigest()
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match=f"{shard_copy / SHARD}: index lists 3 samples, the manifest records 4"):
        ShardSet(shard_copy, "train")


def test_missing_shard_and_missing_manifest_are_named(shard_copy):
    (shard_copy / SHARD).unlink()
    with pytest.raises(ShardError, match=f"{shard_copy / SHARD}: shard listed in the manifest is missing"):
        ShardSet(shard_copy, "train")
    assert verify_shards(shard_copy, workers=1).problems == [f"{shard_copy / SHARD}: missing"]
    (shard_copy / "manifest.json").unlink()
    with pytest.raises(ShardError, match="manifest.json not found"):
        ShardSet(shard_copy, "val")


def test_unknown_split_lists_the_available_ones(marker_shards):
    with pytest.raises(ShardError, match=r"no split 'test' \(has \['train', 'val'\]\)"):
        ShardSet(marker_shards, "test")
