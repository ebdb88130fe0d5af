"""norm="syncbatch": batch norm over the global batch, on CPU (gloo) as on CUDA."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from p2p_dist.models import SyncBatchNorm2d, UNetGenerator

WORKER = Path(__file__).resolve().parent / "sync_batchnorm_worker.py"
REPO_ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("sync_batchnorm_worker", WORKER)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)


def run_ranks(world_size: int, tmp_path: Path) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    outputs = [tmp_path / f"rank{rank}.pt" for rank in range(world_size)]
    ranks = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(rank), str(world_size), str(tmp_path / "init"), str(output)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank, output in enumerate(outputs)
    ]
    for rank in ranks:
        log, _ = rank.communicate(timeout=120)
        assert rank.returncode == 0, log
    return [torch.load(output, weights_only=True) for output in outputs]


def single_process_batch_norm() -> tuple[nn.BatchNorm2d, torch.Tensor, torch.Tensor]:
    """nn.BatchNorm2d over the whole global batch: what the ranks together must reproduce."""
    x, weighting, scale, shift = worker.global_problem()
    x = x.clone().requires_grad_()
    norm = nn.BatchNorm2d(worker.CHANNELS).train()
    with torch.no_grad():
        norm.weight.copy_(scale)
        norm.bias.copy_(shift)
    y = norm(x)
    (y * weighting).sum().backward()
    return norm, y.detach(), x.grad


@pytest.mark.parametrize("world_size", [1, 2])
def test_cpu_ranks_together_reproduce_batch_norm_over_the_global_batch(world_size, tmp_path):
    # world_size 1 matters too: torch's own SyncBatchNorm raises on CPU once any process group exists.
    ranks = run_ranks(world_size, tmp_path)
    expected_norm, expected_y, expected_x_grad = single_process_batch_norm()
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), expected_y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([r["x_grad"] for r in ranks]), expected_x_grad, atol=1e-5, rtol=1e-5)
    # Each rank holds its own share of the parameter gradients; DDP / DeepSpeed then reduce them.
    for name, expected in [("weight_grad", expected_norm.weight.grad), ("bias_grad", expected_norm.bias.grad)]:
        torch.testing.assert_close(sum(r[name] for r in ranks), expected, atol=1e-4, rtol=1e-5)
    for rank in ranks:
        torch.testing.assert_close(rank["running_mean"], expected_norm.running_mean, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(rank["running_var"], expected_norm.running_var, atol=1e-6, rtol=1e-5)


def test_without_a_process_group_syncbatch_is_plain_batch_norm():
    torch.manual_seed(0)
    batch_norm_model = UNetGenerator(3, num_downs=7, ngf=2, norm="batch", dropout=False)
    sync_model = UNetGenerator(3, num_downs=7, ngf=2, norm="syncbatch", dropout=False)
    sync_model.load_state_dict(batch_norm_model.state_dict())
    assert any(isinstance(m, SyncBatchNorm2d) for m in sync_model.modules())
    x = torch.randn(2, 3, 128, 128)
    torch.testing.assert_close(sync_model(x), batch_norm_model(x), atol=0, rtol=0)
    torch.testing.assert_close(sync_model.state_dict(), batch_norm_model.state_dict(), atol=0, rtol=0)
