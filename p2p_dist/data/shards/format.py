"""The shard set format (documented in ``shards/README.md``): names, member codecs and DALI index files.

What every writer and reader of a shard set agrees on::

    DIR/manifest.json                 written last: its presence means the set is complete
    DIR/{split}/shard-000000.tar      webdataset tar: KEY.jpg, KEY.json, KEY.label.png (or KEY.label.pgm)
    DIR/{split}/shard-000000.idx      DALI index of the tar (wds2idx, created in the same step)

Photos are RGB JPEG; label maps are 8-bit greyscale PNG or binary PGM (``label_format`` ``png`` / ``raw``).
The index lists, per sample, each member's data offset and size: both loaders read samples by byte range,
and the manifest records a CRC32 of each sample's range (``sample_crcs``).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from wds2idx import IndexCreator

from p2p_dist.errors import UserError

FORMAT_NAME = "p2p_dist-shards"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
INDEX_VERSION = "v1.2"
PHOTO_MEMBER = "jpg"
META_MEMBER = "json"
LABEL_MEMBERS = {"png": "label.png", "raw": "label.pgm"}  # label_format -> member name
TAR_BLOCK = 512
# Fixed tar header fields: with these the same inputs give byte-identical shards.
TAR_MTIME = 0
TAR_USER = "p2p_dist"


class ShardError(UserError, RuntimeError):
    """A shard set that does not match its manifest (the message names the shard)."""


# ------------------------------------------------------------------------------------- member codecs


def encode_photo(photo: np.ndarray, quality: int, subsampling: str) -> bytes:
    """HxWx3 uint8 RGB -> the ``jpg`` member."""
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="JPEG", quality=quality, subsampling=subsampling)
    return buffer.getvalue()


def decode_photo(data: bytes | memoryview) -> np.ndarray:
    """The ``jpg`` member -> HxWx3 uint8 RGB."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.mode != "RGB":
            raise ValueError(f"photo has mode {image.mode!r}, expected RGB")
        return np.asarray(image)


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


def encode_label_map(ids: np.ndarray, label_format: str) -> bytes:
    """HxW uint8 label ids -> the label member's bytes: 8-bit greyscale PNG (``png``) or PGM (``raw``)."""
    if label_format == "raw":
        return encode_pgm(ids)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(ids, dtype=np.uint8)).save(buffer, format="PNG")  # 2-D uint8 -> mode "L"
    return buffer.getvalue()


def decode_label_map(data: bytes | memoryview, label_format: str) -> np.ndarray:
    """The label member's bytes -> HxW uint8 label ids (the inverse of ``encode_label_map``)."""
    if label_format == "raw":
        return decode_pgm(data)
    with Image.open(io.BytesIO(data)) as image:
        if image.mode != "L":
            raise ValueError(f"label PNG has mode {image.mode!r}, expected 8-bit greyscale 'L'")
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


# ----------------------------------------------------------------------------------- manifest checksums


def sha256_file(path: Path) -> str:
    """The ``sha256`` of a shard as the manifest records it."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sample_crcs(tar_path: Path, samples: list[IndexedSample]) -> list[int]:
    """The manifest's ``sample_crc32``: zlib CRC32 of each sample's byte range ``start..end`` in the tar."""
    fd = os.open(tar_path, os.O_RDONLY)
    try:
        return [zlib.crc32(os.pread(fd, sample.end - sample.start, sample.start)) for sample in samples]
    finally:
        os.close(fd)
