"""Source data sets: find photo / label-map pairs on disk and load them as (RGB photo, label ids).

Two layouts are read (the demo set is written as the first):

* the official Cityscapes download, unzipped as it ships::

      ROOT/leftImg8bit/{train,val,test}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
      ROOT/gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png

  Pairs are matched by ``{city}/{city}_{seq}_{frame}``; every other file (``_color.png``,
  ``_instanceIds.png``, ``_polygons.json``, README, license) is ignored. A photo without its label map, or a
  label map without its photo, is reported by path.

* pix2pix "aligned" folders, as the reference ``prepare_cityscapes_dataset.py`` writes them::

      ROOT/train/0.jpg ...   each photo (left half) beside its colour label map (right half)
      ROOT/test/0.jpg ...    the Cityscapes val split (the script names it test/)

  ``ROOT/val/`` (the layout of the downloadable pix2pix archive) is read when there is no ``test/``. The
  colour maps were resized and JPEG-compressed, so colours are mapped back to label ids by nearest palette
  colour.

Scanning only lists files; decoding and validation happen in ``SourceSample.load``, in the packing workers.
Sample keys become tar member names, so they never contain a dot (webdataset splits names at the first one).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from p2p_dist.data import labels
from p2p_dist.errors import UserError

PHOTO_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
ALIGNED_EXTENSIONS = (".jpg", ".jpeg", ".png")
_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
# Keys are written as tar member names in USTAR headers (100 bytes, minus room for the extension).
MAX_KEY_LENGTH = 80


class SourceLayoutError(UserError, ValueError):
    """A source data set whose folders cannot be read as one layout; the message names the folders."""


class BadSourceFile(Exception):
    """A source file that cannot be used; ``path`` names it and ``reason`` says why."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


@dataclass(frozen=True)
class SourceProblem:
    """A file found while scanning that does not become a sample (e.g. a photo without a label map)."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class SourceSample(ABC):
    """One photo / label-map pair of a source, loadable in a worker process (instances are picklable)."""

    key: str
    split: str

    @abstractmethod
    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """Decode and validate: (HxWx3 uint8 RGB photo, HxW uint8 label ids in 0..NUM_IDS-1).

        Raises ``BadSourceFile`` naming the offending file.
        """

    @abstractmethod
    def files(self, root: Path) -> list[str]:
        """The sample's source files relative to the source root (recorded in the sample's metadata)."""


@dataclass(frozen=True)
class CityscapesPair(SourceSample):
    key: str
    split: str
    photo_path: Path
    label_path: Path

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        photo = read_photo(self.photo_path)
        ids = read_single_channel_label_ids(self.label_path)
        if ids.shape != photo.shape[:2]:
            raise BadSourceFile(
                self.label_path,
                f"label map is {ids.shape[1]}x{ids.shape[0]} but its photo {self.photo_path.name} is "
                f"{photo.shape[1]}x{photo.shape[0]}",
            )
        return photo, ids

    def files(self, root: Path) -> list[str]:
        return [self.photo_path.relative_to(root).as_posix(), self.label_path.relative_to(root).as_posix()]


@dataclass(frozen=True)
class AlignedPair(SourceSample):
    key: str
    split: str
    path: Path

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        image = read_photo(self.path)
        _height, width = image.shape[:2]
        if width % 2:
            raise BadSourceFile(self.path, f"aligned image width {width} is odd: expected photo | label side by side")
        half = width // 2
        return np.ascontiguousarray(image[:, :half]), labels.color_to_ids(image[:, half:])

    def files(self, root: Path) -> list[str]:
        return [self.path.relative_to(root).as_posix()]


@dataclass
class SourceScan:
    """What a scan found: samples per split (sorted by key) and the files that were left out."""

    kind: str
    root: Path
    samples: dict[str, list[SourceSample]]
    problems: dict[str, list[SourceProblem]] = field(default_factory=dict)

    def describe(self) -> dict:
        """The source as recorded in manifest.json."""
        return {"kind": self.kind, "root": str(self.root)}


def read_photo(path: Path) -> np.ndarray:
    """Fully decode an image file to HxWx3 uint8 RGB; any decoding problem is a ``BadSourceFile``."""
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file must fail here, not when it is encoded
            return np.asarray(image.convert("RGB"))
    except Exception as exc:  # PIL reports bad data with many exception types (OSError, SyntaxError, ...)
        raise BadSourceFile(path, f"cannot decode image: {exc}") from exc


def read_single_channel_label_ids(path: Path) -> np.ndarray:
    """Decode a single-channel label-id map (``*_labelIds.png``) and check every value is a label id. Strict
    on purpose: a colour map here is a mix-up to report, not to convert, because several ids share a colour
    (``p2p_dist.inference.read_label_ids``, for translation, also takes colour maps)."""
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            values = np.asarray(image)
    except Exception as exc:
        raise BadSourceFile(path, f"cannot decode label map: {exc}") from exc
    # "P" images are read as their palette indices, which is what an indexed label map stores.
    if mode not in ("L", "P", "I", "I;16"):
        raise BadSourceFile(
            path,
            f"label map has image mode {mode!r}; expected single-channel label ids "
            f"(a colour map such as *_gtFine_color.png cannot be used here)",
        )
    problem = labels.label_id_problem(values)
    if problem:
        raise BadSourceFile(path, problem)
    return values.astype(np.uint8)


def _check_root(root: Path, what: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{what} root {root} is not a directory")
    return root.resolve()


def _key_problem(key: str) -> str | None:
    if not _KEY_PATTERN.match(key):
        return f"sample key {key!r} has characters other than letters, digits, '_' and '-'"
    if len(key) > MAX_KEY_LENGTH:
        return f"sample key {key!r} is longer than {MAX_KEY_LENGTH} characters"
    return None


def scan_cityscapes(root: Path, splits: tuple[str, ...] = ("train", "val")) -> SourceScan:
    """Pair ``leftImg8bit`` photos with ``gtFine`` label-id maps for each split."""
    root = _check_root(root, "Cityscapes")
    for top in ("leftImg8bit", "gtFine"):
        if not (root / top).is_dir():
            raise FileNotFoundError(
                f"{root / top} not found: expected the official Cityscapes layout "
                f"(leftImg8bit/ and gtFine/ side by side under {root})"
            )
    scan = SourceScan("cityscapes", root, {}, {})
    for split in splits:
        photo_dir, label_dir = root / "leftImg8bit" / split, root / "gtFine" / split
        if not photo_dir.is_dir() and not label_dir.is_dir():
            raise FileNotFoundError(f"split {split!r} not found: neither {photo_dir} nor {label_dir} exists")
        photos = _by_name(photo_dir, PHOTO_SUFFIX)
        label_maps = _by_name(label_dir, LABEL_SUFFIX)
        samples: list[SourceSample] = []
        problems = [
            SourceProblem(path, f"photo has no label map (expected {label_dir / name}{LABEL_SUFFIX})")
            for name, path in sorted(photos.items())
            if name not in label_maps
        ]
        problems += [
            SourceProblem(path, f"label map has no photo (expected {photo_dir / name}{PHOTO_SUFFIX})")
            for name, path in sorted(label_maps.items())
            if name not in photos
        ]
        for name in sorted(photos.keys() & label_maps.keys()):
            key = Path(name).name  # {city}_{seq}_{frame}: already unique, the city is part of it
            problem = _key_problem(key)
            if problem:
                problems.append(SourceProblem(photos[name], problem))
            else:
                samples.append(CityscapesPair(key, split, photos[name], label_maps[name]))
        scan.samples[split] = sorted(samples, key=lambda sample: sample.key)
        scan.problems[split] = problems
    return scan


def _by_name(split_dir: Path, suffix: str) -> dict[str, Path]:
    """``{city}/{city}_{seq}_{frame}`` -> file, for the files of one kind under a split directory."""
    if not split_dir.is_dir():
        return {}
    return {
        path.relative_to(split_dir).as_posix()[: -len(suffix)]: path
        for path in split_dir.glob(f"*/*{suffix}")
        if path.is_file()
    }


def scan_aligned(root: Path, splits: tuple[str, ...] = ("train", "val")) -> SourceScan:
    """List the side-by-side images of pix2pix aligned folders (``test/`` or ``val/`` is the val split)."""
    root = _check_root(root, "aligned")
    scan = SourceScan("aligned", root, {}, {})
    for split in splits:
        split_dir = _aligned_split_dir(root, split)
        samples: list[SourceSample] = []
        problems: list[SourceProblem] = []
        files = sorted(
            (path for path in split_dir.iterdir() if path.is_file() and path.suffix.lower() in ALIGNED_EXTENSIONS),
            key=_natural_key,
        )
        seen: dict[str, Path] = {}
        for path in files:
            key = path.stem
            problem = _key_problem(key)
            if problem is None and key in seen:
                problem = f"sample key {key!r} is also the key of {seen[key].name}"
            if problem:
                problems.append(SourceProblem(path, problem))
                continue
            seen[key] = path
            samples.append(AlignedPair(key, split, path))
        scan.samples[split] = samples
        scan.problems[split] = problems
    return scan


def _aligned_split_dir(root: Path, split: str) -> Path:
    if split != "val":
        candidates = [root / split]
    else:
        # prepare_cityscapes_dataset.py writes the val split as test/; the pix2pix download calls it val/.
        candidates = [path for path in (root / "test", root / "val") if path.is_dir()]
        if len(candidates) == 2:
            raise SourceLayoutError(
                f"{root} has both test/ and val/: which one is the val split is ambiguous; move one of them away"
            )
        candidates = candidates or [root / "test"]
    if not candidates[0].is_dir():
        raise FileNotFoundError(f"split {split!r} not found: {candidates[0]} is not a directory")
    return candidates[0]


def _natural_key(path: Path) -> tuple:
    """Sort 2.jpg before 10.jpg, the order the prepare script numbered them in."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.stem))
