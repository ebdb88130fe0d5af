"""The data layer's one image-size convention: ``ImageSize(width, height)``.

Sizes are (width, height) throughout ``p2p_dist.data`` (and in shard manifests, ``--size WxH`` arguments and
PIL calls); array and tensor shapes are (height, width) as numpy and torch order them. Named fields keep the
two from being mixed up where they meet.
"""

from __future__ import annotations

from typing import NamedTuple


class ImageSize(NamedTuple):
    """An image size, width first (PIL's order and the manifest's), unlike torch shapes (height, width)."""

    width: int
    height: int

    @classmethod
    def of(cls, array_shape: tuple[int, ...]) -> ImageSize:
        """The size of an (H, W) or (H, W, C) array."""
        return cls(width=array_shape[1], height=array_shape[0])
