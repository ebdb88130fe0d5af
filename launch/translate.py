"""Translate Cityscapes label maps to photos with a trained generator, and/or export the generator.

  python launch/translate.py --run runs/demo --input labels/ --output fakes/
  python launch/translate.py --run runs/cs --input 'gtFine/val/*/*_labelIds.png' --output fakes/ --batch-size 8
  python launch/translate.py --run runs/cs --export onnx --export-path generator.onnx --no-dropout

Inputs: label-id maps (8-bit greyscale, ids 0..33, e.g. *_gtFine_labelIds.png) or Cityscapes colour maps
(RGB; each pixel takes the nearest palette colour), told apart by their channels (--input-format forces
one). --input is a file, a folder (its image files, not recursive) or a quoted glob pattern. Each input
gives OUTPUT/<stem>_fake.png, its stem without _gtFine_labelIds / _labelIds.

Geometry: by default each map is fed as the generator saw its training data: label ids resized nearest-neighbour
to the square training crop (data.crop_size x data.crop_size, e.g. 256x256; a 2:1 Cityscapes frame is squashed,
as the training loader squashes it), and the photo is written at that size. --output-size input resizes the photo
back to the input map's size (bicubic). --size WxH feeds another size instead (multiples of N for a generator
trained on NxN crops, e.g. 512x256 for unet_256), at the cost of objects at another scale than in training.

Test-time behaviour, as in the pix2pix paper: dropout stays on (--no-dropout for deterministic output) and
batch-norm layers normalise each image with its own statistics, one image at a time (--norm-mode per-image, the
reference's test.py at batch size 1; photos do not depend on --batch-size); --norm-mode running uses the running
statistics of training instead. The stored statistics never change. Instance-norm generators have no choice.

--export writes a standalone generator (TorchScript or ONNX; norm statistics and dropout as chosen, dynamic
batch/height/width) plus a JSON sidecar (same name, .json) describing the input encoding and geometry, value
ranges and accepted sizes. With --input and --output it also translates.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from p2p_dist.cli import add_test_time_arguments, entry_point, parse_size
from p2p_dist.inference.export import EXPORT_FORMATS, export_generator
from p2p_dist.inference.label_maps import INPUT_FORMATS, list_label_maps
from p2p_dist.inference.translate import OUTPUT_SIZES, training_size, translate_paths
from p2p_dist.process_defaults import apply_process_defaults
from p2p_dist.run_dir import resolve_checkpoint
from p2p_dist.train.trained_generator import load_generator


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--run", required=True, type=Path, help="training run directory (holds config.yaml and checkpoints/)"
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="checkpoint tag such as step_000500, or a checkpoint directory (default: the latest)",
    )
    parser.add_argument("--input", type=Path, help="label map file, folder of label maps, or quoted glob pattern")
    parser.add_argument("--output", type=Path, help="folder for the generated photos (created if missing)")
    parser.add_argument("--batch-size", type=int, default=1, help="label maps per forward pass (default: 1)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    parser.add_argument(
        "--size",
        type=parse_size,
        default=None,
        metavar="WxH",
        help="resize every label map to WxH (nearest neighbour) before translating; default: the "
        "training crop (data.crop_size squared), as the model was trained",
    )
    parser.add_argument(
        "--output-size",
        choices=OUTPUT_SIZES,
        default="model",
        help="write photos at the size the generator saw (model, default) or resized back to each "
        "input map's size (input)",
    )
    add_test_time_arguments(parser)
    parser.add_argument(
        "--input-format",
        choices=INPUT_FORMATS,
        default="auto",
        help="label-id maps or colour maps (default: auto, by the image's channels)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for the dropout noise (default: unseeded)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--export",
        choices=EXPORT_FORMATS,
        default=None,
        help="also write a standalone generator in this format (see --export-path)",
    )
    parser.add_argument(
        "--export-path", type=Path, default=None, help="file for --export (a .json sidecar is written next to it)"
    )
    return parser


@entry_point("translate.py")
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    translating = args.input is not None or args.output is not None
    if translating and (args.input is None or args.output is None):
        parser.error("--input and --output go together")
    if not translating and args.export is None:
        parser.error("nothing to do: give --input and --output, and/or --export with --export-path")
    if args.export is not None and args.export_path is None:
        parser.error("--export needs --export-path")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")

    checkpoint = resolve_checkpoint(args.run, args.checkpoint)
    generator, cfg = load_generator(args.run, checkpoint, args.device)
    print(
        f"generator: {checkpoint} (unet_{generator.size_multiple}, {cfg.data.label_encoding} labels) on "
        f"{next(generator.parameters()).device}",
        file=sys.stderr,
    )
    norm_mode = args.norm_mode or cfg.eval.norm_mode
    if translating:
        size = None if args.size is None else (args.size.height, args.size.width)  # torch order
        outputs = translate_paths(
            generator,
            cfg,
            list_label_maps(args.input),
            args.output,
            batch_size=args.batch_size,
            size=size,
            output_size=args.output_size,
            dropout=not args.no_dropout,
            norm_mode=norm_mode,
            input_format=args.input_format,
            seed=args.seed,
            progress=not args.no_progress,
        )
        height, width = size or training_size(cfg)
        print(
            f"wrote {len(outputs)} photos to {args.output} (generated at {width}x{height}"
            f"{', resized to each input size' if args.output_size == 'input' else ''})",
            file=sys.stderr,
        )
    if args.export is not None:
        sidecar = export_generator(
            generator,
            cfg,
            args.export_path,
            args.export,
            dropout=not args.no_dropout,
            norm_mode=norm_mode,
            checkpoint=str(checkpoint),
        )
        print(f"exported {args.export} to {args.export_path} (described in {sidecar})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    apply_process_defaults()  # before torch loads (see p2p_dist/process_defaults.py)
    sys.exit(main())
