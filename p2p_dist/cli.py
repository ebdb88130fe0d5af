"""What the launch/ scripts share: user errors as one line and exit status 2 (`entry_point`), `--config FILE.yaml`
then dotted `key=value` overrides, and image sizes written ``WxH``."""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from collections.abc import Callable

from p2p_dist.config import NORM_MODES, Config, describe, load_config
from p2p_dist.data.image_size import ImageSize
from p2p_dist.errors import USER_ERRORS

USER_ERROR_STATUS = 2  # argparse's status for a bad command line: the same kind of mistake

_SIZE = re.compile(r"(\d+)x(\d+)")


def parse_size(text: str) -> ImageSize | None:
    """argparse type: ``"512x256"`` (WxH) -> ImageSize(width=512, height=256); ``"native"`` -> None (each
    image keeps its own size)."""
    if text.strip().lower() == "native":
        return None
    match = _SIZE.fullmatch(text.strip().lower())
    if not match or 0 in (int(match[1]), int(match[2])):
        raise argparse.ArgumentTypeError(
            f"size {text!r} is not of the form WxH (WIDTHxHEIGHT, e.g. 512x256) or 'native'"
        )
    return ImageSize(int(match[1]), int(match[2]))


def config_parser(description: str, default_config: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (set in the YAML file or as key=value overrides):\n" + describe(),
    )
    parser.add_argument(
        "--config", default=default_config, help=f"YAML config file (default: {default_config or 'built-in defaults'})"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides applied after the file, e.g. train.steps=200 precision=fp32",
    )
    return parser


def add_test_time_arguments(parser: argparse.ArgumentParser) -> None:
    """--no-dropout and --norm-mode: how a trained generator runs at test time (launch/evaluate.py, translate.py)."""
    parser.add_argument(
        "--no-dropout",
        action="store_true",
        help="turn dropout off at test time (deterministic output); default: on, the paper's noise source",
    )
    parser.add_argument(
        "--norm-mode",
        choices=NORM_MODES,
        default=None,
        help="statistics of batch-norm generators: per-image = each image's own, one image at a "
        "time (the paper's protocol), or running = the running statistics of training "
        "(default: the run's eval.norm_mode, per-image unless set)",
    )


def parse_config(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
    args = parser.parse_args(argv)
    return load_config(args.config, args.overrides), args


def entry_point(prog: str) -> Callable[[Callable[..., int | None]], Callable[..., int]]:
    """Decorates a launch script's ``main``: a user error (p2p_dist.errors.USER_ERRORS) is printed as one line,
    ``PROG: error: MESSAGE`` like argparse's own, and returned as status 2; any other exception keeps its
    traceback, which is for bugs. Under a launcher with several ranks each rank says which it is: a rank on
    another node may be the only one that cannot see a path."""

    def decorate(main: Callable[..., int | None]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs) or 0
            except USER_ERRORS as err:
                rank = f"[rank {os.environ.get('RANK', '?')}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
                print(f"{rank}{prog}: error: {err}", file=sys.stderr, flush=True)
                return USER_ERROR_STATUS

        return run

    return decorate
