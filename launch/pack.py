"""Pack a data set into verified WebDataset shards (format: shards/README.md), or verify a shard set.

  python launch/pack.py cityscapes /data/cityscapes --out shards/cityscapes    # official download
  python launch/pack.py aligned datasets/cityscapes --out shards/aligned       # pix2pix train/ + test/
  python launch/pack.py demo --out shards/demo                                # synthetic demo set
  python launch/pack.py verify shards/cityscapes [--full]

Packing writes DIR/{split}/shard-NNNNNN.tar with a DALI index beside each, and DIR/manifest.json last. The
set is built in a hidden directory beside DIR and moved in once complete: a run that stops, even one with
--overwrite, leaves DIR as it was.
A bad source file is named and skipped (counted in the manifest), or stops the run with --strict.
verify exits 1 and names the shard on any mismatch with the manifest.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from p2p_dist.cli import entry_point, parse_size
from p2p_dist.config import ConfigError
from p2p_dist.data.demo.shard_set import ensure_demo_shards
from p2p_dist.data.shards.format import LABEL_MEMBERS
from p2p_dist.data.shards.pack import DEFAULT_SAMPLES_PER_SHARD, JPEG_SUBSAMPLING, PackSettings, pack_pairs
from p2p_dist.data.shards.verify import verify_shards
from p2p_dist.data.sources import scan_aligned, scan_cityscapes
from p2p_dist.process_defaults import apply_process_defaults

SCANNERS = {"cityscapes": scan_cityscapes, "aligned": scan_aligned}


def _splits(text: str) -> tuple[str, ...]:
    splits = tuple(part.strip() for part in text.split(",") if part.strip())
    if not splits:
        raise argparse.ArgumentTypeError("expected a comma-separated list of splits, e.g. train,val")
    return splits


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pack.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{cityscapes,aligned,demo,verify}")

    packing = argparse.ArgumentParser(add_help=False)
    packing.add_argument("--out", type=Path, required=True, help="shard set directory to write")
    packing.add_argument(
        "--size",
        type=parse_size,
        default="512x256",
        help="storage box WIDTHxHEIGHT, aspect ratio kept, or 'native' (default: 512x256)",
    )
    packing.add_argument("--jpeg-quality", type=int, default=95, help="photo JPEG quality (default: 95)")
    packing.add_argument(
        "--jpeg-subsampling",
        choices=JPEG_SUBSAMPLING,
        default="4:2:0",
        help="photo JPEG chroma subsampling (default: 4:2:0)",
    )
    packing.add_argument(
        "--label-format",
        choices=sorted(LABEL_MEMBERS),
        default="png",
        help="label maps as lossless 8-bit PNG, or raw uint8 (PGM) that DALI moves to the GPU "
        "without decoding (default: png)",
    )
    packing.add_argument(
        "--samples-per-shard",
        type=int,
        default=DEFAULT_SAMPLES_PER_SHARD,
        help=f"samples per tar (default: {DEFAULT_SAMPLES_PER_SHARD})",
    )
    packing.add_argument("--workers", type=int, default=None, help="encoding processes (default: all cores)")
    packing.add_argument("--no-progress", action="store_true", help="no progress bar")

    from_source = argparse.ArgumentParser(add_help=False, parents=[packing])
    from_source.add_argument("root", type=Path, help="source data set directory")
    from_source.add_argument(
        "--splits", type=_splits, default=("train", "val"), help="comma-separated splits to pack (default: train,val)"
    )
    from_source.add_argument("--strict", action="store_true", help="stop at the first bad source file")
    from_source.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a shard set already in --out (only once the new one is complete)",
    )

    commands.add_parser(
        "cityscapes",
        parents=[from_source],
        help="official Cityscapes leftImg8bit/ + gtFine/",
        description="Pack the official Cityscapes download (leftImg8bit/ and gtFine/ under ROOT).",
    )
    commands.add_parser(
        "aligned",
        parents=[from_source],
        help="pix2pix aligned folders (train/, test/)",
        description="Pack pix2pix aligned images (photo left, colour label map right).",
    )
    demo = commands.add_parser(
        "demo",
        parents=[packing],
        help="the synthetic demo set",
        description="Generate the synthetic demo tree and pack it (skipped when DIR "
        "already holds it with these settings).",
    )
    demo.add_argument("--num-train", type=int, default=300, help="training scenes (default: 300)")
    demo.add_argument("--num-val", type=int, default=100, help="validation scenes (default: 100)")
    demo.add_argument("--demo-size", type=parse_size, default="512x256", help="generated image size (default: 512x256)")
    demo.add_argument("--seed", type=int, default=0, help="scene generator seed (default: 0)")

    verify = commands.add_parser(
        "verify",
        help="check a shard set against its manifest",
        description="Re-hash every shard, rebuild every index and compare with the "
        "manifest; --full also decodes every member.",
    )
    verify.add_argument("dir", type=Path, help="shard set directory (holding manifest.json)")
    verify.add_argument("--full", action="store_true", help="also decode every member")
    verify.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    return parser


def _verify(args: argparse.Namespace) -> int:
    report = verify_shards(args.dir, full=args.full, workers=args.workers, progress=True)
    for problem in report.problems:
        print(f"FAIL {problem}", file=sys.stderr)
    checked = f"{report.shards} shards, {report.samples} samples" + (", every member decoded" if args.full else "")
    if report.problems:
        print(f"{args.dir}: {len(report.problems)} problem(s) in {checked}", file=sys.stderr)
        return 1
    print(f"{args.dir}: OK ({checked})")
    return 0


def _pack(args: argparse.Namespace) -> int:
    settings = PackSettings(
        size=args.size,
        jpeg_quality=args.jpeg_quality,
        jpeg_subsampling=args.jpeg_subsampling,
        label_format=args.label_format,
        samples_per_shard=args.samples_per_shard,
    )
    progress = not args.no_progress
    if args.command == "demo":
        if args.demo_size is None:
            raise ConfigError("--demo-size must be WIDTHxHEIGHT, not 'native'")
        out = ensure_demo_shards(
            args.out,
            num_train=args.num_train,
            num_val=args.num_val,
            image_size=args.demo_size,
            seed=args.seed,
            settings=settings,
            workers=args.workers,
            progress=progress,
        )
        print(f"demo shards ready in {out}")
        return 0
    scan = SCANNERS[args.command](args.root, args.splits)
    pack_pairs(
        scan,
        args.out,
        settings=settings,
        workers=args.workers,
        strict=args.strict,
        overwrite=args.overwrite,
        progress=progress,
    )
    return 0


@entry_point("pack.py")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return _verify(args) if args.command == "verify" else _pack(args)


if __name__ == "__main__":
    apply_process_defaults()  # before torch loads (see p2p_dist/process_defaults.py)
    sys.exit(main())
