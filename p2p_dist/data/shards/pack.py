"""Packing: source samples -> a verified shard set (format: ``format.py`` and ``shards/README.md``).

``pack_pairs`` validates every member it writes (the photo decodes at its size, the label map decodes back to
exactly the ids it was made from), and records per shard its sample count, byte size, sha256, the sha256 of
its index file, and a CRC32 of every sample's bytes. A set is packed in a hidden sibling directory and moved
into place only once complete.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from p2p_dist.config import ConfigError
from p2p_dist.errors import UserError
from p2p_dist.atomic_write import fsync_dir, write_atomically
from p2p_dist.data import labels
from p2p_dist.data.image_size import ImageSize
from p2p_dist.data.shards.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    LABEL_MEMBERS,
    MANIFEST_NAME,
    META_MEMBER,
    PHOTO_MEMBER,
    TAR_MTIME,
    TAR_USER,
    build_index,
    decode_label_map,
    decode_photo,
    encode_label_map,
    encode_photo,
    parse_index,
    sample_crcs,
    sha256_file,
)
from p2p_dist.data.sources import BadSourceFile, SourceProblem, SourceSample, SourceScan
from p2p_dist.progress import PlainProgress
from p2p_dist.progress import progress_bar as make_progress_bar

JPEG_SUBSAMPLING = ("4:4:4", "4:2:2", "4:2:0")
DEFAULT_SIZE = ImageSize(512, 256)
DEFAULT_SAMPLES_PER_SHARD = 256
_PARTIAL_SUFFIX = ".partial"


class PackError(UserError, RuntimeError):
    """Packing stopped: a bad source with ``strict``, an unusable output directory, or an encoder failure."""


# ---------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class PackSettings:
    """How samples are stored. ``size`` is a box the image is fitted into with its aspect ratio kept
    (2048x1024 Cityscapes -> 512x256, pix2pix's 256x256 halves stay 256x256); None keeps native size."""

    size: ImageSize | None = DEFAULT_SIZE
    jpeg_quality: int = 95
    jpeg_subsampling: str = "4:2:0"
    label_format: str = "png"
    samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD

    def __post_init__(self) -> None:
        if self.size is not None:
            object.__setattr__(self, "size", ImageSize(*self.size))
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        if self.jpeg_subsampling not in JPEG_SUBSAMPLING:
            raise ConfigError(f"jpeg_subsampling must be one of {JPEG_SUBSAMPLING}, got {self.jpeg_subsampling!r}")
        if self.label_format not in LABEL_MEMBERS:
            raise ConfigError(f"label_format must be one of {sorted(LABEL_MEMBERS)}, got {self.label_format!r}")
        if self.samples_per_shard < 1:
            raise ConfigError(f"samples_per_shard must be positive, got {self.samples_per_shard}")

    @property
    def label_member(self) -> str:
        return LABEL_MEMBERS[self.label_format]

    def storage_size(self, width: int, height: int) -> ImageSize:
        """The stored size of a ``width`` x ``height`` source image."""
        if self.size is None:
            return ImageSize(width, height)
        scale = min(self.size.width / width, self.size.height / height)
        return ImageSize(max(1, round(width * scale)), max(1, round(height * scale)))

    def manifest_entries(self) -> tuple[dict, dict]:
        """(storage, encoder) sections of manifest.json."""
        storage = {
            "size": "native" if self.size is None else f"{self.size.width}x{self.size.height}",
            "fit": "each image is scaled to fit inside the box with its aspect ratio kept",
        }
        encoder = {
            "photo": {"member": PHOTO_MEMBER, "format": "jpeg", "quality": self.jpeg_quality,
                      "subsampling": self.jpeg_subsampling, "resample": "bicubic"},
            "label": {"member": self.label_member, "format": self.label_format, "resample": "nearest",
                      "content": "Cityscapes label ids, one uint8 per pixel"
                                 + (" (8-bit greyscale PNG)" if self.label_format == "png"
                                    else " (binary PGM: 'P5 W H 255' header, then raw bytes)")},
            "meta": {"member": META_MEMBER, "content": "key, split, source files, source and stored size"},
            "tar": {"format": "ustar", "mtime": TAR_MTIME, "uid": 0, "gid": 0, "user": TAR_USER,
                    "samples_per_shard": self.samples_per_shard},
        }
        return storage, encoder


# ----------------------------------------------------------------------------------------------- packing


@dataclass(frozen=True)
class _Encoded:
    key: str
    members: dict[str, bytes]
    size: ImageSize


@dataclass(frozen=True)
class _Skipped:
    path: str
    reason: str


def _encode_sample(sample: SourceSample, settings: PackSettings, root: Path) -> _Encoded | _Skipped:
    """Load, validate, resize and encode one sample (runs in a worker process)."""
    try:
        photo, ids = sample.load()
    except BadSourceFile as exc:
        return _Skipped(str(exc.path), exc.reason)
    source_size = ImageSize.of(ids.shape)
    size = settings.storage_size(*source_size)
    if size != source_size:
        photo = np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.BICUBIC))
        ids = np.asarray(Image.fromarray(ids).resize(size, Image.Resampling.NEAREST))
    jpeg = encode_photo(photo, settings.jpeg_quality, settings.jpeg_subsampling)
    label = encode_label_map(ids, settings.label_format)
    # Validate what is written, not only what was read: a member that fails here would fail in training.
    if (decode_photo(jpeg).shape[:2] != ids.shape
            or not np.array_equal(decode_label_map(label, settings.label_format), ids)):
        raise PackError(f"{sample.key}: encoded members do not decode back to the {size.width}x{size.height} sample")
    meta = {"key": sample.key, "split": sample.split, "source": sample.files(root),
            "source_size": list(source_size), "size": list(size)}
    members = {PHOTO_MEMBER: jpeg, META_MEMBER: json.dumps(meta, sort_keys=True).encode(),
               settings.label_member: label}
    return _Encoded(sample.key, members, size)


class _SplitWriter:
    """Writes one split's shards into the staging directory: each tar, then its DALI index, both fsynced."""

    def __init__(self, out_dir: Path, split: str, samples_per_shard: int) -> None:
        self.out_dir = out_dir
        self.split = split
        self.split_dir = out_dir / split
        self.split_dir.mkdir(parents=True, exist_ok=True)
        self.samples_per_shard = samples_per_shard
        self.shards: list[dict] = []
        self._file: io.BufferedWriter | None = None
        self._writer = None  # a webdataset.TarWriter while a shard is open
        self._keys: list[str] = []

    def _names(self, number: int) -> tuple[Path, Path]:
        stem = f"shard-{number:06d}"
        return self.split_dir / f"{stem}.tar", self.split_dir / f"{stem}.idx"

    def add(self, sample: _Encoded) -> None:
        if self._writer is None:
            import webdataset as wds  # imports torch: seconds that the (spawned) encoding workers never need

            tar_path, _ = self._names(len(self.shards))
            self._file = open(tar_path, "wb")
            self._writer = wds.TarWriter(self._file, encoder=False, mtime=TAR_MTIME, user=TAR_USER,
                                         group=TAR_USER, mode=0o444)
        self._writer.write({"__key__": sample.key, **sample.members})
        self._keys.append(sample.key)
        if len(self._keys) == self.samples_per_shard:
            self._finish_shard()

    def finish(self) -> list[dict]:
        if self._writer is not None:
            self._finish_shard()
        fsync_dir(self.split_dir)
        return self.shards

    def abort(self) -> None:
        """Close the shard in progress (the staging directory, with everything in it, is then removed)."""
        if self._writer is not None:
            with suppress(Exception):  # the shard is discarded: whether its tar trailer gets written is moot
                self._writer.close()
            self._file.close()

    def _finish_shard(self) -> None:
        self._writer.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._writer = self._file = None
        tar_path, index_path = self._names(len(self.shards))
        build_index(tar_path, index_path)
        index_text = index_path.read_text()
        indexed = parse_index(index_text, index_path)
        if [sample.key for sample in indexed] != self._keys:
            raise PackError(f"{tar_path}: the DALI index of the new shard does not list the samples written")
        with open(index_path, "rb+") as stream:
            os.fsync(stream.fileno())
        self.shards.append({
            "tar": tar_path.relative_to(self.out_dir).as_posix(),
            "index": index_path.relative_to(self.out_dir).as_posix(),
            "num_samples": len(indexed),
            "size_bytes": tar_path.stat().st_size,
            "sha256": sha256_file(tar_path),
            "index_sha256": hashlib.sha256(index_text.encode()).hexdigest(),
            "sample_crc32": sample_crcs(tar_path, indexed),
        })
        self._keys = []


def _set_files(out_dir: Path) -> list[Path]:
    """The files of the shard set in ``out_dir``, manifest first: what an overwrite replaces."""
    manifest = [out_dir / MANIFEST_NAME] if (out_dir / MANIFEST_NAME).exists() else []
    return manifest + sorted(out_dir.glob("*/shard-*.tar")) + sorted(out_dir.glob("*/shard-*.idx"))


def _staging_dir(out_dir: Path, overwrite: bool) -> Path:
    """Check ``out_dir`` and return an empty hidden sibling to pack into. A sibling is on the same file
    system, so the finished set moves into ``out_dir`` by renames (``_swap_in``)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise PackError(f"output {out_dir} exists and is not a directory")
    old = _set_files(out_dir)
    if old and not overwrite:
        raise PackError(f"output {out_dir} already holds a shard set ({old[0]}, ...); pass --overwrite to "
                        f"replace it or choose another --out")
    resolved = out_dir.resolve()
    staging = resolved.with_name(f".{resolved.name}{_PARTIAL_SUFFIX}")
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed run
    staging.mkdir(parents=True)
    if out_dir.exists() and staging.stat().st_dev != resolved.stat().st_dev:
        staging.rmdir()
        raise PackError(f"output {out_dir} is a mount point: the new set could not be moved in by renames; "
                        f"pack into a directory inside it")
    return staging


def _swap_in(staging: Path, out_dir: Path) -> None:
    """Replace the shard set in ``out_dir`` with the complete one in ``staging``. Other files in ``out_dir``
    (a segmenter cache, notes) stay. The old manifest goes first and the new one comes last, so even a crash
    during these renames leaves no manifest describing shards other than its own."""
    if not out_dir.exists():
        os.rename(staging, out_dir)
        fsync_dir(staging.parent)
        return
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
    fsync_dir(out_dir)
    old_shards = _set_files(out_dir)
    for path in old_shards:
        path.unlink()
    for split_dir in {path.parent for path in old_shards}:
        with suppress(OSError):  # keeps a split directory that holds anything else
            split_dir.rmdir()
    for split_dir in sorted(path for path in staging.iterdir() if path.is_dir()):
        target = out_dir / split_dir.name
        target.mkdir(exist_ok=True)
        for path in sorted(split_dir.iterdir()):
            os.replace(path, target / path.name)
        fsync_dir(target)
    os.replace(staging / MANIFEST_NAME, out_dir / MANIFEST_NAME)
    fsync_dir(out_dir)
    shutil.rmtree(staging)


@contextmanager
def ordered_map(workers: int) -> Iterator[Callable[[Callable, list], Iterator]]:
    """An order-keeping ``map`` over a process pool (spawned: safe even when the caller holds threads or
    CUDA); plain ``map`` for one worker."""
    if workers <= 1:
        yield map
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield partial(pool.imap, chunksize=4)


def _pack_split(results: Iterable[_Encoded | _Skipped], out_dir: Path, split: str, settings: PackSettings,
                scan_problems: list[SourceProblem], strict: bool, progress_bar: tqdm | PlainProgress) -> dict:
    """Write one split's encoded samples into shards; returns the split's manifest entry."""
    skipped = [{"path": str(problem.path), "reason": problem.reason} for problem in scan_problems]
    for item in skipped:
        tqdm.write(f"skipped {item['path']}: {item['reason']}", file=sys.stderr)
    writer = _SplitWriter(out_dir, split, settings.samples_per_shard)
    sizes: set[ImageSize] = set()
    try:
        for result in results:
            progress_bar.update()
            if isinstance(result, _Skipped):
                if strict:
                    raise PackError(f"{result.path}: {result.reason} (--strict: stopping)")
                tqdm.write(f"skipped {result.path}: {result.reason}", file=sys.stderr)
                skipped.append({"path": result.path, "reason": result.reason})
                continue
            writer.add(result)
            sizes.add(result.size)
        shards = writer.finish()
    except BaseException:
        writer.abort()
        raise
    if not shards:
        raise PackError(f"split {split!r}: every one of its samples was skipped")
    return {
        "num_samples": sum(shard["num_samples"] for shard in shards),
        "num_skipped": len(skipped),
        "skipped": skipped,
        "image_sizes": sorted(list(size) for size in sizes),
        "shards": shards,
    }


def pack_pairs(
    scan: SourceScan,
    out_dir: Path,
    *,
    settings: PackSettings = PackSettings(),
    workers: int | None = None,
    strict: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    source: dict | None = None,
) -> dict:
    """Pack the samples of ``scan`` into ``out_dir`` (see module docstring) and return the manifest.

    A bad source file (and every file a scan left out, e.g. a photo without a label map) is named on stderr
    and recorded under the split's ``skipped`` in the manifest; with ``strict`` the first one stops the run.

    The set is packed in a hidden sibling directory and moved into ``out_dir`` only once complete, replacing
    the set there with ``overwrite`` (``_swap_in``). A run that stops (error, ``strict``, interrupt) removes
    what it wrote and leaves ``out_dir`` as it was.
    """
    out_dir = Path(out_dir)
    workers = workers or os.cpu_count() or 1
    if strict:
        for problems in scan.problems.values():
            if problems:
                raise PackError(f"{problems[0]} (--strict: stopping; {sum(map(len, scan.problems.values()))} "
                                f"source problem(s) in all)")
    total = sum(len(samples) for samples in scan.samples.values())
    if total == 0:
        raise PackError(f"no samples found under {scan.root} for splits {sorted(scan.samples)}")
    staging = _staging_dir(out_dir, overwrite)
    storage, encoder = settings.manifest_entries()
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "source": source if source is not None else scan.describe(),
        "storage": storage,
        "encoder": encoder,
        "label_table": labels.label_table(),
        "software": {"pillow": Image.__version__, "webdataset": importlib.metadata.version("webdataset")},
        "splits": {},
    }
    started = time.perf_counter()
    encode = partial(_encode_sample, settings=settings, root=scan.root)
    progress_bar = make_progress_bar(total, "pack", "img", enabled=progress, file=sys.stderr)
    try:
        with progress_bar, ordered_map(workers) as map_in_order:
            for split, samples in scan.samples.items():
                progress_bar.set_description(f"pack {split}")
                results = map_in_order(encode, samples)
                manifest["splits"][split] = _pack_split(results, staging, split, settings,
                                                        scan.problems.get(split, []), strict, progress_bar)
        write_atomically(staging / MANIFEST_NAME, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _swap_in(staging, out_dir)
    seconds = time.perf_counter() - started
    packed = sum(entry["num_samples"] for entry in manifest["splits"].values())
    num_skipped = sum(entry["num_skipped"] for entry in manifest["splits"].values())
    num_shards = sum(len(entry["shards"]) for entry in manifest["splits"].values())
    print(f"packed {packed} images ({num_skipped} skipped) into {num_shards} shards in {out_dir} "
          f"in {seconds:.1f} s: {packed / seconds:.1f} images/s")
    return manifest
