"""Verifying a shard set in full (``launch/pack.py verify``): ``verify_shards``.

Every tar is re-hashed, every index rebuilt from its tar and compared, counts checked against the manifest;
with ``full=True`` every member is decoded. Problems are collected, each naming its shard, not raised.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from p2p_dist.progress import progress_bar

from p2p_dist.data import labels
from p2p_dist.data.shards.format import (
    LABEL_MEMBERS,
    META_MEMBER,
    PHOTO_MEMBER,
    IndexedSample,
    ShardError,
    build_index,
    decode_label_map,
    decode_photo,
    parse_index,
    sample_crcs,
    sha256_file,
)
from p2p_dist.data.shards.pack import ordered_map
from p2p_dist.data.shards.read import read_manifest


@dataclass
class VerifyReport:
    shards_dir: Path
    shards: int
    samples: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def _verify_shard(job: tuple[Path, dict, str, bool]) -> tuple[int, list[str]]:
    """Check one shard completely; returns (samples checked, problems each naming the shard)."""
    shards_dir, entry, label_format, full = job
    tar, index = shards_dir / entry["tar"], shards_dir / entry["index"]
    if not tar.is_file():
        return 0, [f"{tar}: missing"]
    problems = []
    size = tar.stat().st_size
    if size != entry["size_bytes"]:
        problems.append(f"{tar}: {size} bytes, the manifest records {entry['size_bytes']} (truncated or replaced)")
    if sha256_file(tar) != entry["sha256"]:
        problems.append(f"{tar}: sha256 does not match the manifest (corrupt or replaced)")
    if not index.is_file():
        problems.append(f"{tar}: index {index} is missing")
    else:
        text = index.read_text()
        if hashlib.sha256(text.encode()).hexdigest() != entry["index_sha256"]:
            problems.append(f"{tar}: index {index} differs from the one written with the shard (stale index)")
        try:
            stored_count = len(parse_index(text, index))
            if stored_count != entry["num_samples"]:
                problems.append(f"{tar}: index {index} lists {stored_count} samples, the manifest records "
                                f"{entry['num_samples']}")
        except ShardError as exc:
            problems.append(f"{tar}: {exc}")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rebuilt_path = Path(tmp) / "rebuilt.idx"
            build_index(tar, rebuilt_path)
            rebuilt = parse_index(rebuilt_path.read_text(), f"index rebuilt from {tar}")
    except (ValueError, ShardError) as exc:  # wds2idx raises ValueError on a tar without any member
        problems.append(f"{tar}: cannot be indexed: {exc}")
        rebuilt = []
    if len(rebuilt) != entry["num_samples"]:
        problems.append(f"{tar}: holds {len(rebuilt)} complete samples, the manifest records {entry['num_samples']}")
    if problems and len(rebuilt) == len(entry["sample_crc32"]):
        # Pinpoint which samples changed, for the report.
        for sample, crc, actual in zip(rebuilt, entry["sample_crc32"], sample_crcs(tar, rebuilt)):
            if crc != actual:
                problems.append(f"{tar}: sample {sample.key} does not match its CRC32")
    if full:
        problems += _decode_members(tar, rebuilt, label_format)
    return len(rebuilt), problems


def _decode_members(tar: Path, samples: list[IndexedSample], label_format: str) -> list[str]:
    problems = []
    label_member = LABEL_MEMBERS[label_format]
    with open(tar, "rb") as stream:
        for sample in samples:
            try:
                members = {}
                for name in (PHOTO_MEMBER, META_MEMBER, label_member):
                    if name not in sample.members:
                        raise ValueError(f"member {name} is missing")
                    offset, size = sample.members[name]
                    stream.seek(offset)
                    members[name] = stream.read(size)
                photo = decode_photo(members[PHOTO_MEMBER])
                ids = decode_label_map(members[label_member], label_format)
                labels.check_label_ids(ids, "label map")
                if ids.shape != photo.shape[:2]:
                    raise ValueError(f"label map {ids.shape} and photo {photo.shape[:2]} differ in size")
                meta = json.loads(members[META_MEMBER])
                if meta.get("key") != sample.key:
                    raise ValueError(f"metadata names key {meta.get('key')!r}")
            except Exception as exc:
                problems.append(f"{tar}: sample {sample.key}: {exc}")
    return problems


def verify_shards(shards_dir: Path, full: bool = False, *, workers: int | None = None,
                  progress: bool = False) -> VerifyReport:
    """Re-hash every shard, rebuild and compare every index, check counts against the manifest and, with
    ``full``, decode every member. Problems are collected (each names its shard), not raised."""
    shards_dir = Path(shards_dir)
    manifest = read_manifest(shards_dir)
    label_format = manifest["encoder"]["label"]["format"]
    jobs = [(shards_dir, entry, label_format, full)
            for split in manifest["splits"].values() for entry in split["shards"]]
    samples, problems = 0, []
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    with ordered_map(workers) as map_in_order:
        for checked, shard_problems in progress_bar(len(jobs), "verify", "shard", enabled=progress, file=sys.stderr,
                                                    iterable=map_in_order(_verify_shard, jobs)):
            samples += checked
            problems += shard_problems
    return VerifyReport(shards_dir, len(jobs), samples, problems)
