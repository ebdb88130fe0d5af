"""The demo shard set: synthetic scenes (``scenes``) packed like any source, built on demand.

``ensure_demo_shards`` is cheap when the set is current; it (re)builds the set when it is missing, was built
with other settings or an older scene generator, or fails its load-time checks.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from p2p_dist.config import DataConfig
from p2p_dist.data.demo import scenes
from p2p_dist.data.image_size import ImageSize
from p2p_dist.data.shards.format import MANIFEST_NAME, ShardError
from p2p_dist.data.shards.pack import PackError, PackSettings, pack_pairs
from p2p_dist.data.shards.read import ShardSet, read_manifest
from p2p_dist.data.sources import scan_cityscapes

# data.shards' default: the one directory where training builds the demo set on demand.
DEMO_SHARDS = Path(DataConfig.shards)


def ensure_demo_shards(
    out_dir: Path = DEMO_SHARDS,
    *,
    num_train: int = 300,
    num_val: int = 100,
    image_size: ImageSize = scenes.SCENE_SIZE,
    seed: int = 0,
    settings: PackSettings | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Return ``out_dir`` holding the demo shard set, generating and packing it first when it is missing,
    built with other settings, or fails its load-time checks. Never touches a non-demo shard set."""
    out_dir = Path(out_dir)
    settings = settings or PackSettings()  # the packer's defaults
    generator = {
        "num_train": num_train,
        "num_val": num_val,
        "image_size": list(image_size),
        "seed": seed,
        "version": scenes.GENERATOR_VERSION,
    }
    storage, encoder = settings.manifest_entries()
    reason = "none there yet"
    if (out_dir / MANIFEST_NAME).is_file():
        manifest = read_manifest(out_dir)
        if manifest["source"].get("kind") != "demo":
            raise PackError(
                f"{out_dir} holds a {manifest['source'].get('kind')!r} shard set, not the demo set; "
                f"choose another directory"
            )
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
        scenes.write_demo_cityscapes(
            Path(source_root),
            num_train=num_train,
            num_val=num_val,
            size=image_size,
            seed=seed,
            workers=workers or 2,
            progress=progress,
        )
        pack_pairs(
            scan_cityscapes(Path(source_root)),
            out_dir,
            settings=settings,
            workers=workers,
            overwrite=True,
            progress=progress,
            source={"kind": "demo", "generator": generator},
        )
    return out_dir


def ensure_demo_shards_if_default(shards: str | Path) -> None:
    """When ``shards`` is ``DEMO_SHARDS`` (data.shards' default), build the demo set there, or rebuild it
    when stale (``ensure_demo_shards``; cheap when current). Any other directory is left alone: a sweep
    calls this before its trials, which get absolute paths and so never race to rebuild the set."""
    if Path(shards) == DEMO_SHARDS:
        ensure_demo_shards(DEMO_SHARDS)
