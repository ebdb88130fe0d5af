"""Argument parsing shared by the launch/ scripts: `--config FILE.yaml` then dotted `key=value` overrides, and
image sizes written ``WxH``."""

from __future__ import annotations

import argparse
import re
import sys

from p2p_dist.config import Config, ConfigError, describe, load_config
from p2p_dist.data.image_size import ImageSize

_SIZE = re.compile(r"(\d+)x(\d+)")


def parse_size(text: str) -> ImageSize | None:
    """argparse type: ``"512x256"`` (WxH) -> ImageSize(width=512, height=256); ``"native"`` -> None (each
    image keeps its own size)."""
    if text.strip().lower() == "native":
        return None
    match = _SIZE.fullmatch(text.strip().lower())
    if not match or 0 in (int(match[1]), int(match[2])):
        raise argparse.ArgumentTypeError(f"size {text!r} is not of the form WxH (WIDTHxHEIGHT, e.g. 512x256) "
                                         f"or 'native'")
    return ImageSize(int(match[1]), int(match[2]))


def config_parser(description: str, default_config: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (set in the YAML file or as key=value overrides):\n" + describe())
    parser.add_argument("--config", default=default_config,
                        help=f"YAML config file (default: {default_config or 'built-in defaults'})")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides applied after the file, e.g. train.steps=200 precision=fp32")
    return parser


def parse_config(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
    args = parser.parse_args(argv)
    try:
        return load_config(args.config, args.overrides), args
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
