"""The data plane: loader images/s (DALI and webdataset + DataLoader, via ``data_throughput``) and packing
images/s (source files -> verified shards)."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
from pathlib import Path

import torch

from p2p_dist.data.demo.shard_set import ensure_demo_shards
from p2p_dist.data.shards.pack import PackSettings, pack_pairs
from p2p_dist.data.sources import scan_cityscapes

from bench_common import summarise
from data_throughput import measure_throughput


def measure_loaders(
    shards: Path,
    *,
    batch_size: int,
    resolution: int,
    load_size: int,
    batches: int,
    repeats: int,
    warmup: int,
    num_workers: int,
    device: torch.device,
) -> list[dict]:
    """images/s of each loader backend at the training resolution and batch size."""
    rows = []
    for backend in ("dali", "webdataset"):
        result = measure_throughput(
            shards,
            backend=backend,
            batch_size=batch_size,
            batches=batches,
            repeats=repeats,
            warmup=warmup,
            num_workers=num_workers,
            load_size=load_size,
            crop_size=resolution,
            device=device,
        )
        rates = result.pop("images_per_s_repeats")
        result["images_per_s"] = summarise(rates)
        # DALI decodes on the GPU (mixed) when the batches go to a CUDA device, on the CPU otherwise.
        result["decode"] = (
            ("mixed (GPU)" if device.type == "cuda" else "cpu") if backend == "dali" else "PIL in DataLoader workers"
        )
        rows.append(result)
    return rows


def measure_packing(
    *, num_images: int, image_size: tuple[int, int], repeats: int, workers_options: list[int]
) -> list[dict]:
    """images/s of ``pack_pairs`` over a synthetic Cityscapes tree (generated once, not timed), per worker
    count: decoding the source PNGs, resizing, JPEG/PNG encoding, tar writing, indexing and checksums."""
    from p2p_dist.data.demo import scenes

    rows = []
    with tempfile.TemporaryDirectory(prefix="p2p-bench-pack-") as tmp:
        source = Path(tmp) / "source"
        scenes.write_demo_cityscapes(
            source,
            num_train=num_images,
            num_val=0,
            size=image_size,
            seed=0,
            workers=os.cpu_count() or 1,
            progress=False,
        )
        scan = scan_cityscapes(source, splits=("train",))
        for workers in workers_options:
            rates = []
            for _ in range(repeats):
                started = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):  # pack_pairs prints its own summary line
                    pack_pairs(
                        scan,
                        Path(tmp) / "shards",
                        settings=PackSettings(),
                        workers=workers,
                        overwrite=True,
                        progress=False,
                    )
                rates.append(num_images / (time.perf_counter() - started))
            rows.append(
                {
                    "workers": workers,
                    "num_images": num_images,
                    "source_size": list(image_size),
                    "storage_size": PackSettings().manifest_entries()[0]["size"],
                    "images_per_s": summarise(rates),
                }
            )
    return rows


def tiny_demo_shards(out_dir: Path) -> Path:
    """A small demo shard set for quick runs (12 train, 4 val scenes of 128x64)."""
    return ensure_demo_shards(
        out_dir,
        num_train=12,
        num_val=4,
        image_size=(128, 64),
        settings=PackSettings(size=(128, 64)),
        workers=1,
        progress=False,
    )
