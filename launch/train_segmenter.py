"""Train the FCN-score segmenter on the REAL photos of a shard set's train split.

  python launch/train_segmenter.py --shards shards/demo --crop-size 128     # demo set (128x128 training)
  python launch/train_segmenter.py --shards shards/cityscapes --epochs 30   # Cityscapes, 256x256

The segmenter (a compact U-Net, ~1.2M parameters) is cached as SHARDS/segmenter/segmenter_<CROP>.pt with a
JSON sidecar holding the settings, the checksum of SHARDS/manifest.json and the FCN-score of the real val
photos: the ceiling a generator's FCN-score is read against. A cache made from the same shards with the
same settings is reused unless --force is given. Segmenters for different crop sizes live side by side.

Training runs, sweeps and launch/evaluate.py use the cached segmenter for their shards at their data.crop_size,
whatever settings trained it, and train one with the defaults when there is none: train it here first to
choose other settings (--crop-size = the config's data.crop_size).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from p2p_dist.cli import entry_point
from p2p_dist.config import BACKENDS
from p2p_dist.eval.segmenter.cache import SegmenterTrainConfig, read_sidecar
from p2p_dist.eval.segmenter.ensure import ensure_segmenter
from p2p_dist.eval.segmenter.fit import train_segmenter
from p2p_dist.process_defaults import apply_process_defaults

DEFAULTS = SegmenterTrainConfig()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train_segmenter.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shards", type=Path, required=True, help="shard set directory (holds manifest.json)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="checkpoint path (default: SHARDS/segmenter/segmenter_<CROP>.pt, the cache runs read; "
        "sidecar .json beside it)",
    )
    parser.add_argument("--epochs", type=int, default=DEFAULTS.epochs, help=f"default: {DEFAULTS.epochs}")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help=f"default: {DEFAULTS.batch_size}")
    parser.add_argument(
        "--crop-size",
        type=int,
        default=DEFAULTS.crop_size,
        help=f"training resolution, a multiple of 32 (default: {DEFAULTS.crop_size})",
    )
    parser.add_argument("--lr", type=float, default=DEFAULTS.lr, help=f"Adam learning rate (default: {DEFAULTS.lr})")
    parser.add_argument(
        "--width",
        type=int,
        default=DEFAULTS.width,
        help=f"channels of the first stage; parameters grow with its square (default: {DEFAULTS.width})",
    )
    parser.add_argument(
        "--backend", choices=BACKENDS, default=DEFAULTS.backend, help=f"data loader (default: {DEFAULTS.backend})"
    )
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help=f"default: {DEFAULTS.seed}")
    parser.add_argument("--device", default=None, help="torch device (default: the current CUDA device, else cpu)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice; 1 is faster on a CPU shared with other work)",
    )
    parser.add_argument("--force", action="store_true", help="retrain even when a valid cached segmenter exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or closing line")
    return parser


@entry_point("train_segmenter.py")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    settings = dict(
        epochs=args.epochs,
        batch_size=args.batch_size,
        crop_size=args.crop_size,
        lr=args.lr,
        width=args.width,
        backend=args.backend,
        seed=args.seed,
        device=args.device,
        progress=not args.quiet,
    )
    train = train_segmenter if args.force else ensure_segmenter
    path = train(args.shards, out_path=args.out, **settings)
    sidecar = read_sidecar(path)
    print(json.dumps({"checkpoint": str(path), "val_scores": sidecar["val_scores"]}, indent=2))
    return 0


if __name__ == "__main__":
    apply_process_defaults()  # before torch loads (see p2p_dist/process_defaults.py)
    sys.exit(main())
