"""Normalisation layers shared by the generator and the discriminator.

`norm` is one of:
- ``"batch"``: `BatchNorm2d`, ``nn.BatchNorm2d`` (affine, running statistics), the paper's choice, that also runs
  with its affine parameters in bf16 (DeepSpeed's bf16 mode casts parameters, not the fp32 running statistics).
- ``"instance"``: ``nn.InstanceNorm2d`` without affine parameters or running statistics, as the reference
  implementation builds it. The conv layers before it then carry a bias (nothing else would shift them).
- ``"syncbatch"``: `SyncBatchNorm2d`, batch norm whose statistics are computed over the global batch of
  all ranks. With one process it is exactly ``"batch"``. Use it instead of ``"batch"`` for multi-rank
  training: DeepSpeed broadcasts parameters, not buffers, so plain batch norm lets every rank normalise
  with (and keep) its own statistics.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch import nn

from p2p_dist.config import NORMS


def check_norm(norm: str) -> None:
    """Raise a ValueError naming `norm` unless it is one of `NORMS`."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}; got {norm!r}")


def conv_bias(norm: str) -> bool:
    """Whether a conv followed by this norm needs a bias: only InstanceNorm (affine=False) lacks a shift."""
    return norm == "instance"


def make_norm(norm: str, channels: int) -> nn.Module:
    """The normalisation layer for `channels` feature maps."""
    check_norm(norm)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if norm == "syncbatch":
        return SyncBatchNorm2d(channels)
    return BatchNorm2d(channels)


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that also runs when its affine parameters are held in a lower precision than its running
    statistics, as DeepSpeed's bf16 mode leaves them (parameters cast to bf16, buffers kept in fp32); torch's
    kernels refuse that mix. The parameters are then cast up for the call (a few hundred values), so the layer
    normalises with fp32 statistics and fp32 affine parameters, as it does under autocast, and the running
    statistics stay fp32 (bf16 ones could not follow small changes: 8 bits of mantissa). Same parameters and
    buffers as ``nn.BatchNorm2d``: checkpoints and the reference implementation's weights load unchanged."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if _low_precision_affine(self):
            return _batch_norm_with_upcast_affine(self, input)
        return super().forward(input)


def _low_precision_affine(norm: nn.modules.batchnorm._BatchNorm) -> bool:
    return (
        norm.affine
        and norm.running_mean is not None
        and norm.weight is not None
        and norm.weight.dtype != norm.running_mean.dtype
    )


def _batch_norm_with_upcast_affine(norm: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """``_BatchNorm.forward`` for a norm that tracks running statistics, with the affine parameters cast to the
    statistics' dtype."""
    norm._check_input_dim(x)
    momentum = norm.momentum if norm.momentum is not None else 0.0
    if norm.training:
        norm.num_batches_tracked.add_(1)
        if norm.momentum is None:  # cumulative moving average
            momentum = 1.0 / float(norm.num_batches_tracked)
    dtype = norm.running_mean.dtype
    return F.batch_norm(
        x,
        norm.running_mean,
        norm.running_var,
        norm.weight.to(dtype),
        norm.bias.to(dtype),
        norm.training,
        momentum,
        norm.eps,
    )


class SyncBatchNorm2d(nn.SyncBatchNorm):
    """``nn.SyncBatchNorm`` that also synchronises CPU tensors (gloo), so the same model runs everywhere.

    torch 2.14's ``nn.SyncBatchNorm`` behaves as plain batch norm when no process group exists, but as soon
    as one is initialised (DeepSpeed always initialises one, even for a single process) it raises
    ``ValueError: SyncBatchNorm expected input tensor to be on GPU`` for CPU input in training mode.
    On CUDA this class is ``nn.SyncBatchNorm`` unchanged (NCCL, fused kernels). On CPU with a process group
    it all-reduces the per-channel sums itself, through the autograd-aware
    ``torch.distributed.nn.functional.all_reduce`` so that gradients flow across ranks as in the CUDA path.
    Statistics are always computed over the global batch; with world size 1 this is plain batch norm.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        distributed = dist.is_available() and dist.is_initialized()
        if input.device.type == "cpu" and self.training and distributed:
            return self._forward_cpu_synced(input)  # fp32 statistics whatever the parameters' dtype
        if _low_precision_affine(self) and not (self.training and distributed and dist.get_world_size() > 1):
            # bf16 parameters (DeepSpeed's bf16 mode) and nothing to synchronise: batch norm of this process.
            return _batch_norm_with_upcast_affine(self, input)
        return super().forward(input)

    def _forward_cpu_synced(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        group = self.process_group if self.process_group is not None else dist.group.WORLD
        reduce_dims = [d for d in range(x.dim()) if d != 1]
        # Statistics in fp32 even for bf16 activations, as the CUDA kernels do.
        xf = x.float()
        # Two all-reduces (mean, then centred squares) rather than E[x^2] - E[x]^2, which cancels badly.
        count_and_sum = torch.cat([xf.new_tensor([xf.numel() / xf.size(1)]), xf.sum(reduce_dims)])
        count_and_sum = dist_fn.all_reduce(count_and_sum, group=group)
        count, mean = count_and_sum[0], count_and_sum[1:] / count_and_sum[0]
        centred = xf - _per_channel(mean, x.dim())
        var = dist_fn.all_reduce(centred.square().sum(reduce_dims), group=group) / count

        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), count.detach())
        out = centred * _per_channel(torch.rsqrt(var + self.eps), x.dim())
        if self.affine:
            out = out * _per_channel(self.weight, x.dim()) + _per_channel(self.bias, x.dim())
        return out.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        momentum = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked.item()
        unbiased_var = var * count / (count - 1).clamp(min=1)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), momentum)


def _per_channel(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """Shape a per-channel vector to broadcast over (N, C, *spatial)."""
    return values.reshape(1, -1, *([1] * (ndim - 2)))


__all__ = ["NORMS", "BatchNorm2d", "SyncBatchNorm2d", "check_norm", "conv_bias", "make_norm"]
