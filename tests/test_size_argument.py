"""Image sizes on the command line: `p2p_dist.cli.parse_size`, the --size type of launch/pack.py and
launch/translate.py."""

import argparse

import pytest

from p2p_dist.cli import parse_size
from p2p_dist.data.image_size import ImageSize


def test_sizes_are_written_width_by_height_and_read_back_with_named_fields():
    size = parse_size("512x256")
    assert size == ImageSize(width=512, height=256) and (size.width, size.height) == (512, 256)
    assert parse_size(" 64X32 ") == (64, 32)


def test_native_means_each_image_keeps_its_own_size():
    assert parse_size("native") is None and parse_size("Native") is None


@pytest.mark.parametrize("text", ["64", "64x", "x32", "0x32", "64x0", "64x32x3", "-64x32", "big"])
def test_anything_else_is_refused_naming_the_text_and_the_form(text):
    with pytest.raises(argparse.ArgumentTypeError, match=rf"size '{text}' is not of the form WxH"):
        parse_size(text)
