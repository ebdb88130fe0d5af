"""Sample grids: one row per validation pair, label map | generated photo | real photo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid, save_image

from p2p_dist.data.labels import ids_to_color
from p2p_dist.models import to_unit_range


def label_colors(ids: torch.Tensor) -> torch.Tensor:
    """(B, H, W) Cityscapes ids -> (B, 3, H, W) colour maps in [0, 1], whatever the generator's input encoding."""
    rgb = np.stack([ids_to_color(x) for x in ids.cpu().numpy().astype(np.uint8)])
    return torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255


def sample_grid(ids: torch.Tensor, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    rows = torch.stack([label_colors(ids), to_unit_range(fake.detach().cpu()), to_unit_range(real.cpu())], 1)
    rows = rows.flatten(0, 1)
    return make_grid(rows, nrow=3, padding=2, pad_value=1.0)


def save_grid(grid: torch.Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)
