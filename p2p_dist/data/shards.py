"""WebDataset shard sets: pack sources into verified tar shards, verify them, and open them for loading.

A shard set is a directory (format documented in ``shards/README.md``)::

    DIR/manifest.json                 written last: its presence means the set is complete
    DIR/{split}/shard-000000.tar      webdataset tar: KEY.jpg, KEY.json, KEY.label.png (or KEY.label.pgm)
    DIR/{split}/shard-000000.idx      DALI index of the tar (wds2idx, created in the same step)

Integrity is checked at three costs:

* ``pack_pairs`` validates every member it writes (the photo decodes at its size, the label map decodes back
  to exactly the ids it was made from), and records per shard its sample count, byte size, sha256, the sha256
  of its index file, and a CRC32 of every sample's bytes.
* ``ShardSet`` (what the loaders open) is the cheap load-time check: every tar's size, every index file's
  sha256 and sample count and member layout against the manifest, before anything is read; then each
  sample's CRC32 as it is read. Stale, short or foreign index files, truncated or extended tars and flipped
  bytes inside a sample all stop the run with an error naming the shard.
* ``verify_shards`` (``launch/pack.py verify``) re-hashes every tar in full, rebuilds every index from its tar
  and compares, and with ``full=True`` decodes every member.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm
from wds2idx import IndexCreator

from p2p_dist.atomic_write import fsync_dir, write_atomically
from p2p_dist.config import ConfigError
from p2p_dist.data import labels, synthetic
from p2p_dist.data.sources import BadSourceFile, SourceProblem, SourceSample, SourceScan, scan_cityscapes
from p2p_dist.errors import UserError

FORMAT_NAME = "p2p_dist-shards"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
INDEX_VERSION = "v1.2"
PHOTO_MEMBER = "jpg"
META_MEMBER = "json"
LABEL_MEMBERS = {"png": "label.png", "raw": "label.pgm"}
JPEG_SUBSAMPLING = ("4:4:4", "4:2:2", "4:2:0")
DEFAULT_SIZE = (512, 256)
# data.shards' default (p2p_dist/config.py): the one directory where training builds the demo set on demand.
DEMO_SHARDS = Path("shards/demo")
DEFAULT_SAMPLES_PER_SHARD = 256
TAR_BLOCK = 512
# Fixed tar header fields: with these the same inputs give byte-identical shards.
TAR_MTIME = 0
TAR_USER = "p2p_dist"
_PARTIAL_SUFFIX = ".partial"


class ShardError(UserError, RuntimeError):
    """A shard set that does not match its manifest (the message names the shard)."""


class PackError(UserError, RuntimeError):
    """Packing stopped: a bad source with ``strict``, an unusable output directory, or an encoder failure."""


# ---------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class PackSettings:
    """How samples are stored. ``size`` is a box the image is fitted into with its aspect ratio kept
    (2048x1024 Cityscapes -> 512x256, pix2pix's 256x256 halves stay 256x256); None keeps native size."""

    size: tuple[int, int] | None = DEFAULT_SIZE
    jpeg_quality: int = 95
    jpeg_subsampling: str = "4:2:0"
    label_format: str = "png"
    samples_per_shard: int = DEFAULT_SAMPLES_PER_SHARD

    def __post_init__(self) -> None:
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

    def storage_size(self, width: int, height: int) -> tuple[int, int]:
        if self.size is None:
            return width, height
        scale = min(self.size[0] / width, self.size[1] / height)
        return max(1, round(width * scale)), max(1, round(height * scale))

    def manifest_entries(self) -> tuple[dict, dict]:
        """(storage, encoder) sections of manifest.json."""
        storage = {
            "size": "native" if self.size is None else f"{self.size[0]}x{self.size[1]}",
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


# ------------------------------------------------------------------------------------- member encodings


def encode_pgm(ids: np.ndarray) -> bytes:
    """Label ids as binary PGM: a few header bytes, then the raw uint8 pixels (nothing to decode)."""
    height, width = ids.shape
    return f"P5\n{width} {height}\n255\n".encode("ascii") + np.ascontiguousarray(ids, dtype=np.uint8).tobytes()


_PGM_HEADER = re.compile(rb"P5\s+(\d+)\s+(\d+)\s+255\s")


def decode_pgm(data: bytes | memoryview) -> np.ndarray:
    """HxW uint8 view of a PGM written by ``encode_pgm`` (no copy)."""
    match = _PGM_HEADER.match(bytes(data[:32]))
    if not match:
        raise ValueError("not an 8-bit binary PGM (expected a 'P5 WIDTH HEIGHT 255' header)")
    width, height = int(match[1]), int(match[2])
    pixels = np.frombuffer(data, dtype=np.uint8, offset=match.end())
    if pixels.size != width * height:
        raise ValueError(f"PGM header says {width}x{height} but holds {pixels.size} pixels")
    return pixels.reshape(height, width)


def encode_label(ids: np.ndarray, label_format: str) -> bytes:
    if label_format == "raw":
        return encode_pgm(ids)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(ids, dtype=np.uint8)).save(buffer, format="PNG")  # 2-D uint8 -> mode "L"
    return buffer.getvalue()


def decode_label(data: bytes | memoryview, label_format: str) -> np.ndarray:
    if label_format == "raw":
        return decode_pgm(data)
    with Image.open(io.BytesIO(data)) as image:
        if image.mode != "L":
            raise ValueError(f"label PNG has mode {image.mode!r}, expected 8-bit greyscale 'L'")
        return np.asarray(image)


def decode_photo(data: bytes | memoryview) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.mode != "RGB":
            raise ValueError(f"photo has mode {image.mode!r}, expected RGB")
        return np.asarray(image)


# ------------------------------------------------------------------------------------------- index files


@dataclass(frozen=True)
class IndexedSample:
    """One sample of a DALI index: its key and, per member, (data offset, size) in the tar."""

    key: str
    members: dict[str, tuple[int, int]]

    @property
    def start(self) -> int:
        """Offset of the sample's first tar header (members are written back to back, one header each)."""
        return min(offset for offset, _ in self.members.values()) - TAR_BLOCK

    @property
    def end(self) -> int:
        """End of the sample's last member including its padding to a whole tar block."""
        last = max(offset + size for offset, size in self.members.values())
        return -(-last // TAR_BLOCK) * TAR_BLOCK


def parse_index(text: str, where: Path | str) -> list[IndexedSample]:
    """Parse a DALI webdataset index (``v1.2 N`` then per sample ``ext offset size name`` groups)."""
    lines = text.splitlines()
    header = lines[0].split() if lines else []
    if len(header) != 2 or header[0] != INDEX_VERSION or not header[1].isdigit():
        raise ShardError(f"{where}: not a DALI webdataset index (expected a '{INDEX_VERSION} N' header line)")
    body = [line for line in lines[1:] if line.strip()]
    if len(body) != int(header[1]):
        raise ShardError(f"{where}: index header announces {header[1]} samples but lists {len(body)}")
    samples = []
    for line_number, line in enumerate(body, start=2):
        tokens = line.split()
        if not tokens or len(tokens) % 4:
            raise ShardError(f"{where}:{line_number}: malformed index line {line!r}")
        members: dict[str, tuple[int, int]] = {}
        keys = set()
        for ext, offset, size, name in zip(*[iter(tokens)] * 4):
            key, _, name_ext = name.partition(".")
            if name_ext != ext or not offset.isdigit() or not size.isdigit():
                raise ShardError(f"{where}:{line_number}: malformed index entry {ext} {offset} {size} {name}")
            keys.add(key)
            members[ext] = (int(offset), int(size))
        if len(keys) != 1:
            raise ShardError(f"{where}:{line_number}: one index line mixes sample keys {sorted(keys)}")
        samples.append(IndexedSample(keys.pop(), members))
    return samples


def build_index(tar_path: Path, index_path: Path) -> None:
    """Write the DALI index of a tar with the indexer that ships with DALI (``wds2idx``)."""
    with IndexCreator(str(tar_path), str(index_path), verbose=False) as creator:
        creator.create_index()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sample_crcs(tar_path: Path, samples: list[IndexedSample]) -> list[int]:
    fd = os.open(tar_path, os.O_RDONLY)
    try:
        return [zlib.crc32(os.pread(fd, sample.end - sample.start, sample.start)) for sample in samples]
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------------- packing


@dataclass(frozen=True)
class _Encoded:
    key: str
    members: dict[str, bytes]
    size: tuple[int, int]


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
    source_size = (ids.shape[1], ids.shape[0])
    size = settings.storage_size(*source_size)
    if size != source_size:
        photo = np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.BICUBIC))
        ids = np.asarray(Image.fromarray(ids).resize(size, Image.Resampling.NEAREST))
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="JPEG", quality=settings.jpeg_quality,
                                subsampling=settings.jpeg_subsampling)
    jpeg = buffer.getvalue()
    label = encode_label(ids, settings.label_format)
    # Validate what is written, not only what was read: a member that fails here would fail in training.
    if decode_photo(jpeg).shape[:2] != ids.shape or not np.array_equal(decode_label(label, settings.label_format), ids):
        raise PackError(f"{sample.key}: encoded members do not decode back to the {size[0]}x{size[1]} sample")
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
            "sha256": _sha256_file(tar_path),
            "index_sha256": hashlib.sha256(index_text.encode()).hexdigest(),
            "sample_crc32": _sample_crcs(tar_path, indexed),
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
def _ordered_map(workers: int) -> Iterator[Callable[[Callable, list], Iterator]]:
    """An order-keeping ``map`` over a process pool (spawned: safe even when the caller holds threads or
    CUDA); plain ``map`` for one worker."""
    if workers <= 1:
        yield map
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield partial(pool.imap, chunksize=4)


def _pack_split(results: Iterable[_Encoded | _Skipped], out_dir: Path, split: str, settings: PackSettings,
                scan_problems: list[SourceProblem], strict: bool, progress_bar: tqdm) -> dict:
    """Write one split's encoded samples into shards; returns the split's manifest entry."""
    skipped = [{"path": str(problem.path), "reason": problem.reason} for problem in scan_problems]
    for item in skipped:
        tqdm.write(f"skipped {item['path']}: {item['reason']}", file=sys.stderr)
    writer = _SplitWriter(out_dir, split, settings.samples_per_shard)
    sizes: set[tuple[int, int]] = set()
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
    progress_bar = tqdm(total=total, unit="img", disable=not progress, file=sys.stderr)
    try:
        with progress_bar, _ordered_map(workers) as ordered_map:
            for split, samples in scan.samples.items():
                progress_bar.set_description(f"pack {split}")
                results = ordered_map(encode, samples)
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


# ---------------------------------------------------------------------------------------- reading a set


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

    Sample ``i`` is the ``i``-th sample in shard order. Instances are picklable and reopen their file
    descriptors in each process that reads.
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

    def _fd(self, shard_number: int) -> int:
        if os.getpid() != self._pid:  # forked into a worker: descriptors are per process
            self._fds, self._pid = {}, os.getpid()
        if shard_number not in self._fds:
            self._fds[shard_number] = os.open(self._shards[shard_number].tar, os.O_RDONLY)
        return self._fds[shard_number]

    def read(self, index: int) -> SampleBytes:
        """The stored bytes of sample ``index``, CRC-checked against the manifest."""
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


# ---------------------------------------------------------------------------------------------- verifying


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
    if _sha256_file(tar) != entry["sha256"]:
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
        for sample, crc, actual in zip(rebuilt, entry["sample_crc32"], _sample_crcs(tar, rebuilt)):
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
                ids = decode_label(members[label_member], label_format)
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
    with _ordered_map(workers) as ordered_map:
        for checked, shard_problems in tqdm(ordered_map(_verify_shard, jobs), total=len(jobs), unit="shard",
                                            desc="verify", disable=not progress, file=sys.stderr):
            samples += checked
            problems += shard_problems
    return VerifyReport(shards_dir, len(jobs), samples, problems)


# ------------------------------------------------------------------------------------------------- demo


def ensure_demo_shards(
    out_dir: Path = DEMO_SHARDS,
    *,
    num_train: int = 300,
    num_val: int = 100,
    image_size: tuple[int, int] = (512, 256),
    seed: int = 0,
    settings: PackSettings = PackSettings(),
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Return ``out_dir`` holding the demo shard set, generating and packing it first when it is missing,
    built with other settings, or fails its load-time checks. Never touches a non-demo shard set."""
    out_dir = Path(out_dir)
    generator = {"num_train": num_train, "num_val": num_val, "image_size": list(image_size), "seed": seed,
                 "version": synthetic.GENERATOR_VERSION}
    storage, encoder = settings.manifest_entries()
    reason = "none there yet"
    if (out_dir / MANIFEST_NAME).is_file():
        manifest = read_manifest(out_dir)
        if manifest["source"].get("kind") != "demo":
            raise PackError(f"{out_dir} holds a {manifest['source'].get('kind')!r} shard set, not the demo set; "
                            f"choose another directory")
        reason = "the set there was built with other settings or an older scene generator"
        wanted = (generator, storage, encoder)
        if (manifest["source"].get("generator"), manifest["storage"], manifest["encoder"]) == wanted:
            try:
                for split in manifest["splits"]:
                    ShardSet(out_dir, split)
                return out_dir
            except ShardError as exc:
                reason = str(exc)
    print(f"building the demo shards in {out_dir} ({reason})", file=sys.stderr, flush=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".demo-source-", dir=out_dir.parent) as source_root:
        synthetic.write_demo_cityscapes(Path(source_root), num_train=num_train, num_val=num_val, size=image_size,
                                        seed=seed, workers=workers or 2, progress=progress)
        pack_pairs(scan_cityscapes(Path(source_root)), out_dir, settings=settings, workers=workers,
                   overwrite=True, progress=progress, source={"kind": "demo", "generator": generator})
    return out_dir


def ensure_demo_shards_if_default(shards: str | Path) -> None:
    """When ``shards`` is ``DEMO_SHARDS`` (data.shards' default), build the demo set there, or rebuild it
    when stale (``ensure_demo_shards``; cheap when current). Any other directory is left alone: a sweep
    calls this before its trials, which get absolute paths and so never race to rebuild the set."""
    if Path(shards) == DEMO_SHARDS:
        ensure_demo_shards(DEMO_SHARDS)
