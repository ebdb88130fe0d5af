"""Data-only throughput: images/s through a loader (read, decode, augment, encode labels), no model.

  python benchmarks/data_throughput.py --shards shards/demo --backend dali --batch-size 16 --batches 50
  python benchmarks/data_throughput.py --shards shards/demo --backend webdataset --workers 2
  python benchmarks/data_throughput.py --shards shards/demo --prefetch ahead   # DALI decoding the next batch early

Each repeat times ``--batches`` batches after ``--warmup`` untimed ones (pipeline build, worker start-up,
page cache); the result is the median over repeats. Epochs follow one another as in training. On a CUDA
machine the batches land on the GPU and the clock stops after a device synchronisation.
``measure_throughput`` returns the numbers as a dict for the benchmark suite.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from p2p_dist.config import BACKENDS, LABEL_ENCODINGS, PREFETCH_MODES
from p2p_dist.data.loaders.build import build_loader
from p2p_dist.data.loaders.contract import ShardLoader
from p2p_dist.data.shards.read import read_manifest
from p2p_dist.runtime import resolve_prefetch


def _endless(loader: ShardLoader) -> Iterator[dict]:
    epoch = 0
    while True:
        yield from loader.epoch(epoch)
        epoch += 1


def measure_throughput(
    shards: Path | str,
    *,
    backend: str = "dali",
    split: str = "train",
    batch_size: int = 16,
    batches: int = 50,
    repeats: int = 3,
    warmup: int = 5,
    num_workers: int = 2,
    load_size: int = 286,
    crop_size: int = 256,
    label_encoding: str = "color",
    prefetch: str = "auto",
    device: torch.device | None = None,
) -> dict:
    """Time the loader on ``split`` of ``shards``; images/s is the median over ``repeats``. ``prefetch`` is DALI's
    (``data.prefetch``): auto decodes on demand on a CPU, as training does, so nothing overlaps the decoding here."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loader = build_loader(
        shards,
        split,
        backend=backend,
        batch_size=batch_size,
        train=True,
        load_size=load_size,
        crop_size=crop_size,
        label_encoding=label_encoding,
        device=device,
        num_workers=num_workers,
        prefetch=prefetch,
    )
    stream = _endless(loader)
    for _ in range(warmup):
        next(stream)
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(batches):
            next(stream)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rates.append(batches * batch_size / (time.perf_counter() - started))
    stream.close()
    loader.close()
    manifest = read_manifest(shards)
    return {
        "backend": backend,
        "device": str(device),
        "shards": str(shards),
        "split": split,
        "storage_size": manifest["storage"]["size"],
        "label_format": manifest["encoder"]["label"]["format"],
        "batch_size": batch_size,
        "batches": batches,
        "repeats": repeats,
        "warmup": warmup,
        "num_workers": num_workers,
        "load_size": load_size,
        "crop_size": crop_size,
        "label_encoding": label_encoding,
        "prefetch": resolve_prefetch(prefetch, device, backend),
        "images_per_s": statistics.median(rates),
        "images_per_s_repeats": rates,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=Path, required=True, help="shard set directory (holding manifest.json)")
    parser.add_argument("--backend", choices=BACKENDS, default="dali")
    parser.add_argument("--split", default="train")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=50, help="timed batches per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches first")
    parser.add_argument("--workers", type=int, default=2, help="DALI threads or DataLoader worker processes")
    parser.add_argument("--load-size", type=int, default=286)
    parser.add_argument("--crop-size", type=int, default=256)
    parser.add_argument("--label-encoding", choices=LABEL_ENCODINGS, default="color")
    parser.add_argument(
        "--prefetch", choices=PREFETCH_MODES, default="auto", help="DALI: decode ahead or on demand (data.prefetch)"
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    args = parser.parse_args()
    result = measure_throughput(
        args.shards,
        backend=args.backend,
        split=args.split,
        batch_size=args.batch_size,
        batches=args.batches,
        repeats=args.repeats,
        warmup=args.warmup,
        num_workers=args.workers,
        load_size=args.load_size,
        crop_size=args.crop_size,
        label_encoding=args.label_encoding,
        prefetch=args.prefetch,
        device=torch.device(args.device) if args.device else None,
    )
    print(json.dumps(result, indent=1))
    print(
        f"{result['backend']} on {result['device']}: {result['images_per_s']:.1f} images/s "
        f"(median of {result['repeats']} x {result['batches']} batches of {result['batch_size']})"
    )


if __name__ == "__main__":
    main()
