"""One rank of tests/models/test_sync_batchnorm.py (run as a script, not collected by pytest).

    python sync_batchnorm_worker.py RANK WORLD_SIZE INIT_FILE OUTPUT_FILE

Joins a gloo process group, runs SyncBatchNorm2d in training mode on its slice of a seeded global batch,
backpropagates a seeded weighting of the output and saves outputs, gradients and running statistics.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from p2p_dist.models import SyncBatchNorm2d

GLOBAL_BATCH = 4
CHANNELS = 3


def global_problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input, output weighting (defines the loss), norm scale and shift; identical on every rank."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(GLOBAL_BATCH, CHANNELS, 5, 6, generator=generator) * 3 + 1
    weighting = torch.randn(x.shape, generator=generator)
    scale = torch.rand(CHANNELS, generator=generator) + 0.5
    shift = torch.randn(CHANNELS, generator=generator)
    return x, weighting, scale, shift


def main() -> None:
    rank, world_size, init_file, output_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    x, weighting, scale, shift = global_problem()
    x_local = x.chunk(world_size)[rank].clone().requires_grad_()
    norm = SyncBatchNorm2d(CHANNELS).train()
    with torch.no_grad():
        norm.weight.copy_(scale)
        norm.bias.copy_(shift)
    y = norm(x_local)
    (y * weighting.chunk(world_size)[rank]).sum().backward()
    torch.save(
        {
            "y": y.detach(),
            "x_grad": x_local.grad,
            "weight_grad": norm.weight.grad,
            "bias_grad": norm.bias.grad,
            "running_mean": norm.running_mean,
            "running_var": norm.running_var,
        },
        output_file,
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
