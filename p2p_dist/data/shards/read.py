"""Opening a shard set for loading: ``read_manifest`` and ``ShardSet``, the cheap load-time check.

``ShardSet`` checks every tar's size, every index file's sha256 and sample count and member layout against
the manifest before anything is read; then each sample's CRC32 as it is read. Stale, short or foreign index
files, truncated or extended tars and flipped bytes inside a sample all stop the run with an error naming the
shard. (The full check, re-hashing every tar, is ``verify.verify_shards``.)
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from p2p_dist.data.shards.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    META_MEMBER,
    PHOTO_MEMBER,
    IndexedSample,
    ShardError,
    parse_index,
)


def read_manifest(shards_dir: Path) -> dict:
    """Load and sanity-check ``manifest.json`` of a shard set."""
    path = Path(shards_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ShardError(f"{path} not found: {shards_dir} is not a (complete) shard set; build one with "
                         f"`python launch/pack.py`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ShardError(f"{path}: not valid JSON ({exc})") from exc
    if manifest.get("format") != FORMAT_NAME:
        raise ShardError(f"{path}: format {manifest.get('format')!r} is not {FORMAT_NAME!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ShardError(f"{path}: format version {manifest.get('format_version')} is not supported "
                         f"(this code reads version {FORMAT_VERSION}); repack the source")
    return manifest


@dataclass(frozen=True)
class SampleBytes:
    """One sample as stored: ``blob`` is its tar byte range (headers, data, padding), ``members`` views into
    it by member name (``jpg``, ``json``, ``label.png`` / ``label.pgm``)."""

    key: str
    shard: Path
    blob: bytes
    members: dict[str, memoryview]


@dataclass(frozen=True)
class _OpenShard:
    tar: Path
    samples: list[IndexedSample]
    crcs: list[int]


class ShardSet:
    """One split of a shard set, checked against its manifest on opening (see module docstring).

    Sample ``i`` is the ``i``-th sample in shard order, or after `select` the ``i``-th selected one. Instances
    are picklable and reopen their file descriptors in each process that reads.
    """

    def __init__(self, shards_dir: Path, split: str) -> None:
        self.shards_dir = Path(shards_dir)
        self.split = split
        self.manifest = read_manifest(self.shards_dir)
        splits = self.manifest["splits"]
        if split not in splits:
            raise ShardError(f"{self.shards_dir / MANIFEST_NAME}: no split {split!r} (has {sorted(splits)})")
        label = self.manifest["encoder"]["label"]
        self.label_format: str = label["format"]
        self.label_member: str = label["member"]
        self.members = {PHOTO_MEMBER, META_MEMBER, self.label_member}
        self._shards = [self._check_shard(entry) for entry in splits[split]["shards"]]
        counts = [len(shard.samples) for shard in self._shards]
        if sum(counts) != splits[split]["num_samples"]:
            raise ShardError(f"{self.shards_dir / MANIFEST_NAME}: split {split!r} records "
                             f"{splits[split]['num_samples']} samples but its shards hold {sum(counts)}")
        self._shard_of = np.repeat(np.arange(len(counts)), counts)
        self._first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.keys: list[str] = [sample.key for shard in self._shards for sample in shard.samples]
        self._selected: np.ndarray | None = None
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def _check_shard(self, entry: dict) -> _OpenShard:
        tar, index = self.shards_dir / entry["tar"], self.shards_dir / entry["index"]
        hint = f"(run `python launch/pack.py verify {self.shards_dir}`, then repack)"
        if not tar.is_file():
            raise ShardError(f"{tar}: shard listed in the manifest is missing")
        size = tar.stat().st_size
        if size != entry["size_bytes"]:
            raise ShardError(f"{tar}: {size} bytes but the manifest records {entry['size_bytes']}: truncated or "
                             f"replaced shard {hint}")
        if not index.is_file():
            raise ShardError(f"{tar}: its DALI index {index} is missing {hint}")
        text = index.read_text()
        if hashlib.sha256(text.encode()).hexdigest() != entry["index_sha256"]:
            raise ShardError(f"{tar}: index {index} is not the one written with this shard (stale or rebuilt "
                             f"index) {hint}")
        samples = parse_index(text, index)
        if len(samples) != entry["num_samples"] or len(entry["sample_crc32"]) != entry["num_samples"]:
            raise ShardError(f"{tar}: index lists {len(samples)} samples, the manifest records "
                             f"{entry['num_samples']} {hint}")
        for sample in samples:
            if set(sample.members) != self.members:
                raise ShardError(f"{tar}: sample {sample.key} has members {sorted(sample.members)}, expected "
                                 f"{sorted(self.members)} {hint}")
        if samples and samples[-1].end > size:
            raise ShardError(f"{tar}: index points past the end of the tar {hint}")
        return _OpenShard(tar, samples, entry["sample_crc32"])

    @property
    def num_samples(self) -> int:
        return len(self.keys)

    def select(self, samples: np.ndarray) -> None:
        """Keep only these samples of the split (indices in shard order, e.g. a held-out slice or what remains
        without it): sample ``i`` is then ``samples[i]``. Once, on a fresh set."""
        if self._selected is not None:
            raise RuntimeError("select() was already called on this ShardSet")
        selected = np.asarray(samples, dtype=np.int64)
        if len(selected) == 0 or selected.min() < 0 or selected.max() >= len(self.keys):
            raise ValueError(f"samples must be a non-empty selection of the split's {len(self.keys)} indices")
        self._selected = selected
        self.keys = [self.keys[i] for i in selected]

    def _fd(self, shard_number: int) -> int:
        if os.getpid() != self._pid:  # forked into a worker: descriptors are per process
            self._fds, self._pid = {}, os.getpid()
        if shard_number not in self._fds:
            self._fds[shard_number] = os.open(self._shards[shard_number].tar, os.O_RDONLY)
        return self._fds[shard_number]

    def read(self, index: int) -> SampleBytes:
        """The stored bytes of sample ``index``, CRC-checked against the manifest."""
        if self._selected is not None:
            index = int(self._selected[index])
        shard_number = int(self._shard_of[index])
        shard = self._shards[shard_number]
        local = index - int(self._first[shard_number])
        sample = shard.samples[local]
        blob = os.pread(self._fd(shard_number), sample.end - sample.start, sample.start)
        if len(blob) != sample.end - sample.start or zlib.crc32(blob) != shard.crcs[local]:
            raise ShardError(f"{shard.tar}: sample {sample.key} (#{local} in the shard) fails its CRC32 check: "
                             f"the shard is corrupt (run `python launch/pack.py verify {self.shards_dir}`)")
        view = memoryview(blob)
        members = {name: view[offset - sample.start: offset - sample.start + size]
                   for name, (offset, size) in sample.members.items()}
        return SampleBytes(sample.key, shard.tar, blob, members)

    def close(self) -> None:
        if os.getpid() == self._pid:
            for fd in self._fds.values():
                os.close(fd)
        self._fds = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fds": {}}
